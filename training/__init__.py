"""The training side of ``main_imagenet.py``: data, distributed set-up, checkpoints, schedules and logging.

``main_imagenet.py`` holds the flow you read top to bottom; the pieces it calls live here, one concern
per module (as torchvision's ``references/classification`` splits ``presets.py`` and ``utils.py``).
"""
