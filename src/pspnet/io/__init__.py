"""Reading and writing files: images of any channel count, label masks, atomic writes.

Every reader raises `pspnet.errors.DataError` naming the file; every writer is atomic.
"""
