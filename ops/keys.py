"""CLI for API keys: ``python -m ops.keys create --name X | list | revoke KEY_ID``.

The table comes from ``--table`` or ``CIRRUS_API_KEYS_TABLE``; the endpoint from ``--endpoint-url``
or boto3's ``AWS_ENDPOINT_URL`` (the local system's moto server). ``create`` prints the key once:
only its salted hash is stored.
"""
from __future__ import annotations

import argparse
import json
import sys

from botocore.exceptions import BotoCoreError, ClientError

from functions.core.aws.base import error_code, error_message, make_client
from functions.core.auth import KeyStore
from functions.core.errors import CirrusError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.keys", description=__doc__.splitlines()[0])
    parser.add_argument("--table", help="API keys table (default: $CIRRUS_API_KEYS_TABLE)")
    parser.add_argument("--endpoint-url", help="DynamoDB endpoint (default: boto3's, e.g. $AWS_ENDPOINT_URL)")
    parser.add_argument("--region", help="AWS region (default: boto3's)")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--name", required=True, help="who or what the key is for")
    sub.add_parser("list", help="list keys (ids, names, dates, revoked; never secrets)")
    revoke = sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)

    try:
        ddb = make_client("dynamodb", endpoint_url=args.endpoint_url, region_name=args.region)
        keys = KeyStore(args.table, ddb=ddb)
        if args.command == "create":
            key, record = keys.create(args.name)
            print(json.dumps({"api_key": key, **record.public()}, indent=2))
            print("Store this key now: it cannot be shown again.", file=sys.stderr)
        elif args.command == "list":
            print(json.dumps([r.public() for r in keys.list()], indent=2))
        else:
            print(json.dumps(keys.revoke(args.key_id).public(), indent=2))
    except (CirrusError, RuntimeError) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    except ClientError as exc:  # e.g. a wrong table name: AWS's code and message, one line
        print(f"error: {error_code(exc) or 'error'}: {error_message(exc)}", file=sys.stderr)
        return 1
    except (BotoCoreError, ValueError) as exc:  # no region or credentials, unreachable or malformed endpoint
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
