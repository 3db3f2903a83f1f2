"""CLI for API keys: ``python -m ops.keys create --name X [--rate R --burst B --quota Q] | list | revoke KEY_ID``.

The table comes from ``--table`` or ``CIRRUS_API_KEYS_TABLE``; the endpoint from ``--endpoint-url``
or boto3's ``AWS_ENDPOINT_URL`` (the local system's moto server). ``create`` prints the key once:
only its salted hash is stored. With ``--usage-plan`` (or ``CIRRUS_USAGE_PLAN_ID``: the stack's
``UsagePlanId`` output) the key is registered for per-key throttling: the stage's default limits,
or its own with ``--rate/--burst/--quota`` (ops/usage_plans.py).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from botocore.exceptions import BotoCoreError, ClientError

from functions.core.aws.base import error_code, error_message, make_client
from functions.core.auth import KeyStore
from functions.core.errors import CirrusError
from ops.usage_plans import KeyLimits, UsagePlans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.keys", description=__doc__.splitlines()[0])
    parser.add_argument("--table", help="API keys table (default: $CIRRUS_API_KEYS_TABLE)")
    parser.add_argument("--endpoint-url", help="DynamoDB endpoint (default: boto3's, e.g. $AWS_ENDPOINT_URL)")
    parser.add_argument("--region", help="AWS region (default: boto3's)")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create a key and print it (once)")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--usage-plan", default=os.environ.get("CIRRUS_USAGE_PLAN_ID"),
                        help="the stage's default usage plan id (stack output UsagePlanId; "
                             "default: $CIRRUS_USAGE_PLAN_ID). Without it the key is in no plan, and API Gateway, "
                             "which requires a usage key on every method, answers it 403")
    create.add_argument("--rate", type=float, help="this key's steady requests/s (default: the stage's)")
    create.add_argument("--burst", type=int, help="this key's burst, in requests (default: the stage's)")
    create.add_argument("--quota", type=int, help="this key's requests per --quota-period (default: the stage's)")
    create.add_argument("--quota-period", choices=("DAY", "WEEK", "MONTH"), default="DAY")
    sub.add_parser("list", help="list keys (ids, names, dates, revoked; never secrets)")
    revoke = sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)

    try:
        ddb = make_client("dynamodb", endpoint_url=args.endpoint_url, region_name=args.region)
        keys = KeyStore(args.table, ddb=ddb)
        if args.command == "create":
            limits = KeyLimits(rate=args.rate, burst=args.burst, quota=args.quota, period=args.quota_period)
            if limits.any and not args.usage_plan:
                raise CirrusError("--rate/--burst/--quota need the stage's usage plan: --usage-plan ID "
                                  "(stack output UsagePlanId) or CIRRUS_USAGE_PLAN_ID")
            plans = UsagePlans(make_client("apigateway", endpoint_url=args.endpoint_url, region_name=args.region),
                               args.usage_plan) if args.usage_plan else None
            key, record = keys.create(args.name, usage=(lambda kid: plans.register(kid, limits)) if plans else None)
            print(json.dumps({"api_key": key, **record.public()}, indent=2))
            print("Store this key now: it cannot be shown again.", file=sys.stderr)
            if plans is None:
                print("warning: the key is in no usage plan; the API answers it 403 key_not_enabled until it "
                      "is (create keys with --usage-plan ID or CIRRUS_USAGE_PLAN_ID)", file=sys.stderr)
        elif args.command == "list":
            print(json.dumps([r.public() for r in keys.list()], indent=2))
        else:
            record = keys.revoke(args.key_id)
            if record.usage_key_id:  # API Gateway stops metering it as well
                apigw = make_client("apigateway", endpoint_url=args.endpoint_url, region_name=args.region)
                UsagePlans(apigw, record.usage_plan_id or "").disable(record.usage_key_id)
            print(json.dumps(record.public(), indent=2))
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
