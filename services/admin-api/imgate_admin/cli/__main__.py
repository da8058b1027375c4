"""`python -m imgate_admin.cli`"""

from imgate_admin.cli import main

main()
