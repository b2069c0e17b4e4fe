from triosrv._cli import main

main()
