"""`python -m imgate_connector`: one connector replica."""

from imgate_common.unused_imports import skip_unused_imports

skip_unused_imports()  # before any library looks for them

from imgate_connector.main import main  # noqa: E402

main()
