from evalcam.cli import main

main()
