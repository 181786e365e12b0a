"""``python -m s3_uploader``: the same as the ``s3-uploader`` command."""
import sys

from .cli import main

sys.exit(main())
