"""The S3 adapter under prefix-scoped list permissions: a 403 for a missing key is "not found", a real denial is not."""
from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from functions.core.aws import base, s3

BUCKET = "cirrus-unit-artifacts"
KEY = "models/all-minilm-l6-v2/current.json"


@pytest.fixture
def bucket(aws):
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    return BUCKET


def _denied(stubber: Stubber, operation: str) -> None:
    stubber.add_client_error(operation, service_error_code="AccessDenied" if operation == "get_object" else "403",
                             http_status_code=403)


@pytest.mark.parametrize("operation", ["get_object", "head_object"])
def test_a_denied_read_of_a_key_that_is_not_listed_is_not_found(bucket, operation):
    # What S3 answers a role whose ListBucket carries an s3:prefix condition, for a key that is absent.
    stubber = Stubber(base.client("s3"))
    _denied(stubber, operation)
    stubber.add_response("list_objects_v2", {"KeyCount": 1, "Contents": [{"Key": KEY + ".bak"}]},
                         {"Bucket": bucket, "Prefix": KEY, "MaxKeys": 1})
    with stubber:
        if operation == "get_object":
            with pytest.raises(s3.ObjectNotFound):
                s3.get_bytes(bucket, KEY)
        else:
            assert s3.head(bucket, KEY) is None
    stubber.assert_no_pending_responses()


@pytest.mark.parametrize("operation", ["get_object", "head_object"])
def test_a_denied_read_of_a_key_that_exists_stays_a_denial(bucket, operation):
    stubber = Stubber(base.client("s3"))
    _denied(stubber, operation)
    stubber.add_response("list_objects_v2", {"KeyCount": 1, "Contents": [{"Key": KEY}]},
                         {"Bucket": bucket, "Prefix": KEY, "MaxKeys": 1})
    with stubber, pytest.raises(ClientError) as err:
        s3.get_bytes(bucket, KEY) if operation == "get_object" else s3.head(bucket, KEY)
    assert base.error_code(err.value) in s3.DENIED_CODES


def test_a_denied_read_where_listing_is_denied_too_stays_a_denial(bucket):
    stubber = Stubber(base.client("s3"))
    _denied(stubber, "get_object")
    stubber.add_client_error("list_objects_v2", service_error_code="AccessDenied", http_status_code=403)
    with stubber, pytest.raises(ClientError):
        s3.get_bytes(bucket, KEY)


def test_a_missing_key_on_moto_is_not_found_without_a_listing(bucket):
    with pytest.raises(s3.ObjectNotFound):
        s3.get_bytes(bucket, KEY)
    assert s3.head(bucket, KEY) is None


def test_a_deleted_batch_input_read_as_403_is_an_object_change_not_a_retry(monkeypatch):
    # A worker lists only its prefix (an s3:prefix condition), so S3 may answer a missing key with 403.
    from botocore.exceptions import ClientError

    from functions.core.batch import objects

    class Denying:
        def get_object(self, **kw):
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "denied"}}, "GetObject")

        def list_objects_v2(self, **kw):
            return {"Contents": []}

    monkeypatch.setattr(objects, "client", lambda name: Denying())
    monkeypatch.setattr(objects.s3, "client", lambda name: Denying())
    with pytest.raises(objects.ObjectChanged):
        list(objects.read_blocks("b", "jobs/input/x.jsonl", etag="e"))
