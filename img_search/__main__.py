from img_search.cli import main

main()
