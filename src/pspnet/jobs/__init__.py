"""Jobs over files: evaluation of a split (evaluation.py), prediction of image and video files to folders
(predict_files.py, video.py)."""
