"""s3-uploader: ship files from a local directory tree to S3, and never lose one.

Data flows watcher/scanner -> stability -> uploader (through remote) -> store -> cleanup; the
daemon wires them together and the cli is the user's door.
"""
__version__ = "0.1.0"
