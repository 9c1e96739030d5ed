"""The fault proxy itself: each rule fires on the request it names and leaves the rest forwarded."""

from __future__ import annotations

import contextlib
import time

import pytest

pytest.importorskip("boto3")


def _client(proxy):
    from botocore.config import Config

    return proxy.s3.client(Config(retries={"max_attempts": 1, "mode": "standard"}))


def test_rules_fire_on_their_requests_only(fault_proxy):
    from botocore.exceptions import ClientError

    client = _client(fault_proxy)
    client.put_object(Bucket="shop", Key="a/x.jpg", Body=b"x")
    client.put_object(Bucket="shop", Key="b/y.jpg", Body=b"y")
    fault_proxy.fail_listing("a/")
    with pytest.raises(ClientError, match="500|InternalError"):
        client.list_objects_v2(Bucket="shop", Prefix="a/")
    assert client.list_objects_v2(Bucket="shop", Prefix="b/")["KeyCount"] == 1
    fault_proxy.clear()
    fault_proxy.deny_gets(r"\.jpg$")
    with pytest.raises(ClientError, match="AccessDenied"):
        client.get_object(Bucket="shop", Key="a/x.jpg")
    assert client.list_objects_v2(Bucket="shop", Prefix="a/")["KeyCount"] == 1
    fault_proxy.clear()
    fault_proxy.slow_down(30)
    with pytest.raises(ClientError, match="SlowDown"):
        client.list_objects_v2(Bucket="shop")
    fault_proxy.slow_down(0.3)  # a new window, counted from the next request that reaches the proxy
    with contextlib.suppress(ClientError):  # that request (a client may send another first)
        client.get_object(Bucket="shop", Key="a/x.jpg")
    time.sleep(0.4)  # past the window: forwarded again
    assert client.get_object(Bucket="shop", Key="a/x.jpg")["Body"].read() == b"x"
    assert set(fault_proxy.hits) == {"fail_listing", "deny_gets", "slow_down"}


def test_a_dropped_put_reply_lands_and_the_retry_gets_412(fault_proxy):
    from botocore.exceptions import ClientError

    client = _client(fault_proxy)  # botocore retries the dropped reply by itself
    fault_proxy.drop_put_reply("shop/_PLAN")
    with pytest.raises(ClientError, match="PreconditionFailed"):
        client.put_object(Bucket="shop", Key="_PLAN", Body=b"mine", IfNoneMatch="*")
    assert fault_proxy.hits == {"drop_put_reply": 1}
    assert fault_proxy.upstream.client().get_object(Bucket="shop", Key="_PLAN")["Body"].read() == b"mine"
