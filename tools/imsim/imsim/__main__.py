"""`python -m imsim --host 127.0.0.1 --port 8790 --app [PLATFORM:]APP_ID:SECRET[:ROBOT_CODE]`"""

import argparse
import logging
import sys

import structlog
import uvicorn

from imsim.app import create_app
from imsim.settings import APP_SPEC_FORM, AppSpec, Settings


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="imsim", description="Local IM platform simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument(
        "--app",
        dest="apps",
        action="append",
        default=[],
        metavar=APP_SPEC_FORM,
        help=(
            "pre-create an app (repeatable): DingTalk without a platform (CLIENT_ID:CLIENT_SECRET"
            "[:ROBOT_CODE]), else e.g. feishu:cli_x:secret; env IMSIM_APPS takes a comma-separated list"
        ),
    )
    parser.add_argument("--public-url", help="base URL clients use to reach imsim")
    parser.add_argument("--log-format", choices=("console", "json"), default="console")
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def _configure_logging(log_format: str, level: str) -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    _configure_logging(args.log_format, args.log_level)
    try:
        apps = Settings.apps_from_env() + [AppSpec.parse(a) for a in args.apps]
    except ValueError as exc:
        raise SystemExit(f"imsim: {exc}") from exc
    settings = Settings(host=args.host, port=args.port, apps=apps, public_url=args.public_url)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        # The sans-I/O websockets protocol avoids the deprecated legacy websockets API.
        ws="websockets-sansio",
        log_level=args.log_level,
    )


if __name__ == "__main__":
    main()
