"""open_store: every URL form parses into the right store, and malformed ones are StoreUrlInvalid.

Opening without ``create=1`` talks to no server, so none is started here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kluis.catalog import KluisError
from kluis.stores import LocalStore, open_store
from kluis.stores.azure import AzureBlobStore
from kluis.stores.s3 import S3Store

ACCOUNT_KEY = "a2x1aXMtdGVzdC1rZXk="  # base64 of "kluis-test-key"; no server checks it here


@pytest.fixture
def azure_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Account and key in the environment, as a deployment would have them."""
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "kluisacct")
    monkeypatch.setenv("AZURE_STORAGE_KEY", ACCOUNT_KEY)


def test_file_forms(tmp_path: Path) -> None:
    plain = open_store(str(tmp_path / "a"))
    assert isinstance(plain, LocalStore) and plain.root == tmp_path / "a"
    url = open_store(f"file://{tmp_path}/b")
    assert isinstance(url, LocalStore) and url.root == tmp_path / "b"


def test_s3_minimal() -> None:
    store = open_store("s3://my-bucket")
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.region) == ("my-bucket", "", "us-east-1")
    assert store.url == "s3://my-bucket"


def test_s3_every_option() -> None:
    url = (
        "s3://backups.example/site%20a/vault/?endpoint=https://s3.example.net:9000/&region=eu-west-1"
        "&addressing=virtual&retries=2&connect_timeout=1.5&read_timeout=30&create=0"
    )
    store = open_store(url)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.region) == ("backups.example", "site a/vault", "eu-west-1")
    assert store.url == (
        "s3://backups.example/site%20a/vault?endpoint=https://s3.example.net:9000&region=eu-west-1"
        "&addressing=virtual&retries=2&connect_timeout=1.5&read_timeout=30"
    )
    again = open_store(store.url)
    assert isinstance(again, S3Store) and again.url == store.url and again.prefix == "site a/vault"


def test_s3_region_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-southeast-2")
    store = open_store("s3://my-bucket")
    assert isinstance(store, S3Store) and store.region == "ap-southeast-2"
    url_wins = open_store("s3://my-bucket?region=eu-north-1")
    assert isinstance(url_wins, S3Store) and url_wins.region == "eu-north-1"


@pytest.mark.usefixtures("azure_keys")
def test_azure_with_account_url() -> None:
    store = open_store("azure://vault-data/a/b?account_url=http://127.0.0.1:10000/kluisacct&retries=1")
    assert isinstance(store, AzureBlobStore)
    assert (store.container, store.prefix) == ("vault-data", "a/b")
    assert store.url == "azure://vault-data/a/b?account_url=http://127.0.0.1:10000/kluisacct&retries=1"
    assert ACCOUNT_KEY not in store.url


@pytest.mark.usefixtures("azure_keys")
def test_azure_account_url_from_account_name() -> None:
    store = open_store("azure://vault-data")
    assert store.url == "azure://vault-data?account_url=https://kluisacct.blob.core.windows.net"


def test_azure_account_url_from_connection_string(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        f"DefaultEndpointsProtocol=https;AccountName=kluisacct;AccountKey={ACCOUNT_KEY};"
        "EndpointSuffix=core.chinacloudapi.cn",
    )
    store = open_store("azure://vault-data")
    assert store.url == "azure://vault-data?account_url=https://kluisacct.blob.core.chinacloudapi.cn"


def test_azure_without_credentials_is_unavailable() -> None:
    with pytest.raises(KluisError) as info:
        open_store("azure://vault-data?account_url=http://127.0.0.1:10000/kluisacct")
    assert info.value.code == "StoreUnavailable"
    assert "AZURE_STORAGE_KEY" in info.value.message


BAD_URLS = [
    ("ftp://host/x", "unknown scheme"),
    ("file://", "no path"),
    ("s3://", "no bucket"),
    ("s3:///prefix", "no bucket"),
    ("s3://ab", "not a valid bucket name"),
    ("s3://My_Bucket", "not a valid bucket name"),
    ("s3://bucket..name", "not a valid bucket name"),
    ("s3://key:secret@bucket", "credentials do not belong in the URL"),
    ("s3://bucket/a/../b", "prefix"),
    ("s3://bucket/a//b", "prefix"),
    ("s3://bucket/./a", "prefix"),
    ("s3://bucket?endpoint=ftp://host", "endpoint must be"),
    ("s3://bucket?endpoint=http://", "endpoint must be"),
    ("s3://bucket?endpoint=http://u:p@host", "must not carry a query or credentials"),
    ("s3://bucket?secret_key=x", "unknown option"),
    ("s3://bucket?region=a&region=b", "given twice"),
    ("s3://bucket?create=maybe", "create must be 1 or 0"),
    ("s3://bucket?addressing=sideways", "addressing must be"),
    ("s3://bucket?retries=-1", "retries must be 0 or more"),
    ("s3://bucket?region=no%20such/region", "not a region name"),
    ("s3://bucket?retries=1.5", "retries must be a number"),
    ("s3://bucket?connect_timeout=0", "connect_timeout must be positive"),
    ("s3://bucket?read_timeout=soon", "read_timeout must be a number"),
    ("s3://bucket#frag", "fragment"),
    ("azure://", "no container"),
    ("azure://Vault", "not a valid container name"),
    ("azure://vault--data", "not a valid container name"),
    ("azure://-vault", "not a valid container name"),
    ("azure://ab", "not a valid container name"),
    ("azure://acct:key@vault", "credentials do not belong in the URL"),
    ("azure://vault/a/../b", "prefix"),
    ("azure://vault?account_url=127.0.0.1:10000", "account_url must be"),
    ("azure://vault?account_url=https://a.blob.core.windows.net/%3Fsig%3Dx", "must not carry a query"),
    ("azure://vault?account_key=x", "unknown option"),
    ("azure://vault?create=2", "create must be 1 or 0"),
    ("azure://vault?retries=x", "retries must be a number"),
]


@pytest.mark.usefixtures("azure_keys")
@pytest.mark.parametrize(("url", "why"), BAD_URLS)
def test_rejects_bad_urls(url: str, why: str) -> None:
    with pytest.raises(KluisError) as info:
        open_store(url)
    assert info.value.code == "StoreUrlInvalid"
    assert info.value.params["url"] == url
    assert why in info.value.message


def test_unknown_aws_profile_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "kluis-no-such-profile")
    with pytest.raises(KluisError) as info:
        open_store("s3://my-bucket")
    assert info.value.code == "StoreUnavailable"
    assert "kluis-no-such-profile" in info.value.message


def test_azure_needs_an_account() -> None:
    with pytest.raises(KluisError) as info:
        open_store("azure://vault")
    assert info.value.code == "StoreUrlInvalid"
    assert "account_url" in info.value.message
