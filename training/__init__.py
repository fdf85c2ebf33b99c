"""The training side of ``main_imagenet.py``: data, distributed set-up, checkpoints, schedules and logging.

``main_imagenet.py`` holds the command line and the launch; ``run.py`` the phases of a process, read top to
bottom; the pieces they call live here, one concern per module (as torchvision's ``references/classification``
splits ``presets.py`` and ``utils.py``). Each subsystem owns its command-line options: ``add_options(parser)``
(its ``--help`` group) and a frozen options class built once from the parsed command line (``training.options``).
"""
