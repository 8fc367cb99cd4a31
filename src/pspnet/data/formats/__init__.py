"""Dataset formats on disk: Cityscapes, ADE20K, PASCAL VOC, image pairs and plain folders.

Each is a `FileSource` (formats/common.py); `pspnet.data.sources` builds them from a `DataConfig`.
"""
