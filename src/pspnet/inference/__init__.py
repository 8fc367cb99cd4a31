"""From an image to class probabilities and a label map, for any model that maps a normalised
batch to logits: the test-time protocols (protocol.py) and single-image prediction (predict.py)."""
