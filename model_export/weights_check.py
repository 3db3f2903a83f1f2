"""Check a GPU model copy in S3 against its recorded hashes; also the stack's deploy-time check (inline Lambda).

Self-contained (boto3 + stdlib): infra ships this file's text as the custom resource's code.
"""
import base64
import hashlib
import json
import urllib.request

MANIFEST = "cirrus-weights.json"


class WeightsError(Exception):
    pass


def check_weights(s3, bucket, prefix, manifest_sha256):
    """The copy under ``prefix`` is exactly what its manifest lists, and the manifest is the pinned one:
    no file missing or extra (SageMaker copies the whole prefix), each object's size and the SHA-256
    that S3 computed when it was stored equal to the manifest's. Returns {"files", "bytes"}."""
    raw = s3.get_object(Bucket=bucket, Key=prefix + MANIFEST)["Body"].read()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != manifest_sha256:
        raise WeightsError(f"{prefix}{MANIFEST} has sha256 {digest}, the stage pins {manifest_sha256}")
    files = json.loads(raw)["files"]
    listed = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        listed |= {o["Key"][len(prefix):] for o in page.get("Contents", [])}
    extra = sorted(listed - set(files) - {MANIFEST})
    missing = sorted(set(files) - listed)
    if extra or missing:
        raise WeightsError(f"{prefix}: files not in the manifest {extra[:5]}, missing {missing[:5]}")
    total = 0
    for rel, entry in sorted(files.items()):
        head = s3.head_object(Bucket=bucket, Key=prefix + rel, ChecksumMode="ENABLED")
        want = base64.b64encode(bytes.fromhex(entry["sha256"])).decode()
        if head["ContentLength"] != entry["bytes"] or head.get("ChecksumSHA256") != want:
            raise WeightsError(f"{prefix}{rel}: size or stored SHA-256 differs from the manifest")
        total += entry["bytes"]
    return {"files": len(files), "bytes": total}


def handler(event, context):
    """CloudFormation custom resource: fail the deploy (before the model exists) when the copy differs."""
    status, reason, data = "SUCCESS", "", {}
    try:
        if event["RequestType"] != "Delete":
            import boto3

            p = event["ResourceProperties"]
            data = check_weights(boto3.client("s3"), p["Bucket"], p["Prefix"], p["ManifestSha256"])
    except Exception as exc:  # every failure must reach CloudFormation, or the stack hangs
        status, reason = "FAILED", f"{type(exc).__name__}: {exc}"[:900]
    body = json.dumps({"Status": status, "Reason": reason or "verified", "Data": data,
                       "PhysicalResourceId": event.get("PhysicalResourceId") or f"weights-{event['LogicalResourceId']}",
                       "StackId": event["StackId"], "RequestId": event["RequestId"],
                       "LogicalResourceId": event["LogicalResourceId"]}).encode()
    req = urllib.request.Request(event["ResponseURL"], data=body, method="PUT",
                                 headers={"Content-Type": "", "Content-Length": str(len(body))})
    urllib.request.urlopen(req, timeout=30).close()
