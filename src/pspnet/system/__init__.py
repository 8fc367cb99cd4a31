"""Process plumbing shared by every job: the device, several processes (torchrun, DDP), the environment of a run
and progress bars."""
