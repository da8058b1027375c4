"""`python -m imgate_admin`: serve the admin API with uvicorn on ADMIN_HOST:ADMIN_PORT."""

import sys

import uvicorn

from imgate_admin.errors import StartupError
from imgate_admin.main import SERVICE, create_app
from imgate_admin.settings import AdminSettings
from imgate_common.runtime import process_telemetry


def main() -> int:
    settings = AdminSettings()
    with process_telemetry(SERVICE, settings):
        try:
            app = create_app(settings)
        except StartupError as exc:
            print(f"imgate-admin-api: {exc}", file=sys.stderr)
            return 2
        # log_config=None: uvicorn's loggers go through the stdlib set-up of configure_logging
        # instead of installing their own handlers and formats.
        uvicorn.run(app, host=settings.host, port=settings.port, log_config=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
