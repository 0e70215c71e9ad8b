from evalcam.cli import entry

entry()
