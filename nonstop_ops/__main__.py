from nonstop_ops.cli import main

main()
