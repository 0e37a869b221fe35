"""Round trips of chunks, blobs, packs and trees, checked with generated inputs."""

from __future__ import annotations

import io
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kluis.catalog import KluisError
from kluis.engine.blobs import BlobCodec
from kluis.engine.chunker import MAX_SIZE, iter_chunks, make_chunker
from kluis.engine.format import (
    BlobType,
    IndexEntry,
    check_pack_trailer,
    decode_index,
    decode_pack_trailer,
    decode_refs,
    encode_index,
    encode_pack_trailer,
    encode_refs,
)
from kluis.engine.keys import MasterKeys
from kluis.engine.packs import PackWriter
from kluis.engine.trees import Node, decode_tree, encode_tree
from kluis.stores import LocalStore

KEYS = MasterKeys.generate()


def _data(size: int, seed: int) -> bytes:
    # Compressible but not trivial: repeated random words.
    rnd = os.urandom(4096) if seed % 3 == 0 else bytes(range(256)) * 16
    out = bytearray()
    while len(out) < size:
        out += rnd[(seed * 7) % 512 : (seed * 7) % 512 + 700]
        seed += 1
    return bytes(out[:size])


@settings(max_examples=25, deadline=None)
@given(
    size=st.integers(0, 3 * MAX_SIZE),
    seed=st.integers(0, 1000),
    read_size=st.sampled_from([1 << 12, 1 << 20, 1 << 30]),
)
def test_streaming_chunks_equal_whole_buffer_chunks(size: int, seed: int, read_size: int) -> None:
    data = os.urandom(size) if seed % 2 else _data(size, seed)
    chunker = make_chunker(KEYS.chunker_seed)
    whole = [bytes(c.data) for c in chunker.cut_buf(data)] if data else []
    stream = io.BytesIO(data)

    def readinto(view: memoryview) -> int:
        return stream.readinto(view[:read_size])

    streamed = [bytes(c) for c in iter_chunks(chunker, readinto, bytearray(2 * MAX_SIZE + 4096))]
    assert streamed == whole
    assert b"".join(streamed) == data


def test_chunker_seed_changes_boundaries() -> None:
    data = os.urandom(8 * 1024 * 1024)
    a = [c.length for c in make_chunker(KEYS.chunker_seed).cut_buf(data)]
    b = [c.length for c in make_chunker(MasterKeys.generate().chunker_seed).cut_buf(data)]
    assert a != b


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=200_000), btype=st.sampled_from(list(BlobType)))
def test_blob_roundtrip(data: bytes, btype: BlobType) -> None:
    codec = BlobCodec(KEYS)
    blob_id = codec.chunk_id(data)
    blob, flags = codec.encode(blob_id, btype, data)
    assert codec.decode(blob_id, btype, flags, blob, len(data)) == data


def test_blob_tampering_is_detected() -> None:
    codec = BlobCodec(KEYS)
    data = b"hello world " * 1000
    blob_id = codec.chunk_id(data)
    blob, flags = codec.encode(blob_id, BlobType.DATA, data)
    assert flags == 1  # compressible text is compressed
    bad = bytearray(blob)
    bad[40] ^= 1
    for args in [
        (blob_id, BlobType.DATA, flags, bytes(bad)),  # flipped bit
        (blob_id, BlobType.TREE, flags, blob),  # wrong type
        (blob_id, BlobType.DATA, 0, blob),  # flags flipped
        (codec.chunk_id(b"other"), BlobType.DATA, flags, blob),  # swapped id
        (blob_id, BlobType.DATA, flags, blob[:10]),  # truncated
    ]:
        with pytest.raises(KluisError) as info:
            codec.decode(*args, len(data))
        assert info.value.code == "RepoBlobCorrupt"


def test_incompressible_data_is_stored_raw() -> None:
    codec = BlobCodec(KEYS)
    data = os.urandom(1 << 20)
    blob, flags = codec.encode(codec.chunk_id(data), BlobType.DATA, data)
    assert flags == 0 and len(blob) == len(data) + 28


def test_other_key_cannot_decode() -> None:
    data = b"secret" * 100
    a = BlobCodec(KEYS)
    blob, flags = a.encode(a.chunk_id(data), BlobType.DATA, data)
    with pytest.raises(KluisError):
        BlobCodec(MasterKeys.generate()).decode(a.chunk_id(data), BlobType.DATA, flags, blob, len(data))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    blobs=st.lists(st.binary(max_size=50_000), min_size=1, max_size=40), target=st.integers(10_000, 400_000)
)
def test_pack_roundtrip(tmp_path_factory: pytest.TempPathFactory, blobs: list[bytes], target: int) -> None:
    store = LocalStore(tmp_path_factory.mktemp("packs"))
    codec = BlobCodec(KEYS)
    uploaded: list[IndexEntry] = []
    writer = PackWriter(store, codec, uploaded.extend, target_size=target, max_blob=60_000)
    for b in blobs:
        writer.add(codec.chunk_id(b), BlobType.DATA, b)
    writer.flush()
    assert len(uploaded) == len(blobs)
    by_id = {codec.chunk_id(b): b for b in blobs}
    packs = {o.name: store.get(o.name) for o in store.list("data/")}
    assert writer.packs_written == len(packs)
    for name, data in packs.items():
        # The vault's cheaper check agrees with the full parse.
        assert check_pack_trailer(name, data, len(data)) == len(decode_pack_trailer(name, data, len(data)))
        for e in decode_pack_trailer(name, data, len(data)):
            raw = data[e.offset : e.offset + e.length]
            assert codec.decode(e.id, e.type, e.flags, raw, e.raw_length) == by_id[e.id]
    # The index entries agree with the pack tables.
    for e in uploaded:
        data = packs[f"data/{e.pack.hex()[:2]}/{e.pack.hex()}"]
        assert (
            codec.decode(e.id, e.type, e.flags, data[e.offset : e.offset + e.length], e.raw_length)
            == by_id[e.id]
        )
    entries = list(decode_index("i", encode_index(uploaded)))
    assert entries == uploaded


def test_pack_trailer_damage_is_a_catalog_error() -> None:
    for parse in (decode_pack_trailer, check_pack_trailer):
        with pytest.raises(KluisError) as info:
            parse("p", b"x" * 100, 100)
        assert info.value.code == "RepoPackCorrupt"


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 5000), min_size=1, max_size=30),
    extra=st.integers(-3, 3),
    flip=st.integers(0, 10_000),
)
def test_pack_trailer_checks_agree(lengths: list[int], extra: int, flip: int) -> None:
    """Both parsers accept and refuse the same trailers: sizes that do not add up, a bit flipped."""
    trailer = encode_pack_trailer((bytes([i]) * 32, 0, 0, n, n) for i, n in enumerate(lengths))
    size = sum(lengths) + len(trailer) + extra
    damaged = bytearray(trailer)
    if flip < len(damaged) * 8 and flip % 3 == 0:
        damaged[flip // 8] ^= 1 << (flip % 8)
    outcomes = []
    for parse in (decode_pack_trailer, check_pack_trailer):
        try:
            got = parse("p", bytes(damaged), size)
            outcomes.append(len(got) if isinstance(got, list) else got)
        except KluisError as exc:
            assert exc.code == "RepoPackCorrupt"
            outcomes.append(None)
    assert outcomes[0] == outcomes[1]
    if extra == 0 and damaged == trailer:
        assert outcomes[0] == len(lengths)


@given(ids=st.lists(st.binary(min_size=32, max_size=32), max_size=200))
def test_refs_roundtrip(ids: list[bytes]) -> None:
    assert decode_refs("p", encode_refs(ids)) == sorted(set(ids))


_names = st.text(min_size=1, max_size=30).filter(lambda s: "/" not in s and s not in (".", ".."))
_raw_names = st.binary(min_size=1, max_size=30).filter(lambda b: b"/" not in b and b not in (b".", b".."))


@settings(max_examples=60, deadline=None)
@given(
    names=st.lists(
        st.one_of(_names, _raw_names.map(lambda b: b.decode("utf-8", "surrogateescape"))), max_size=20
    ),
    mode=st.integers(0, 0o7777),
    mtime=st.integers(0, 2**62),
    xattr=st.binary(max_size=100),
)
def test_tree_roundtrip(names: list[str], mode: int, mtime: int, xattr: bytes) -> None:
    import base64

    nodes = [
        Node(
            name=n,
            type="file",
            mode=mode,
            mtime_ns=mtime,
            size=i,
            content=["ab" * 32, 4096],
            xattrs={"user.x": base64.b64encode(xattr).decode()},
        )
        for i, n in enumerate(dict.fromkeys(names))
    ]
    decoded = decode_tree(encode_tree(nodes))
    assert sorted(decoded, key=lambda n: n.name) == sorted(nodes, key=lambda n: n.name)
    assert encode_tree(list(reversed(nodes))) == encode_tree(nodes)  # deterministic: equal dirs dedupe


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"{",
        b'{"v":2,"nodes":[]}',
        b'{"v":1,"nodes":[{"n":"a","t":"bogus"}]}',
        b'{"v":1,"nodes":[{"n":"a","t":"file","m":"x"}]}',
        b"[1,2]",
    ],
)
def test_bad_tree_is_a_catalog_error(bad: bytes) -> None:
    with pytest.raises(KluisError) as info:
        decode_tree(bad)
    assert info.value.code == "RepoTreeCorrupt"
