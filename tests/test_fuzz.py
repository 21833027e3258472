"""Fuzzing: config overrides, the idx reader and the image reader fed random input raise only
the project's one-line UserError (or succeed), never another exception."""

from __future__ import annotations

import gzip
import io

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from gangaps.config import load_config
from gangaps.data.images import decode_image
from gangaps.data.mnist import parse_idx
from gangaps.errors import UserError

# derandomize: the same 300 examples on every run, so CI cannot turn red by chance; a failure
# found once is kept below as an @example.
FAST = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
KEYS = ["gan.lr", "gan.options.width", "gan.betas", "experiment.iterations", "classifiers.0.seeds",
        "classifiers.5.arch", "data", "name", "evaluation.fid", "seed", "gan", "gan.options",
        "classifier_training.augment", "x.y.z", "classifiers.0", "experiment.instances"]
VALUES = st.one_of(st.text(max_size=30), st.sampled_from([
    "[1,2", "{a: 1}", "null", "-1", "1e999", ".nan", "[[[[]]]]", "&a [*a]", "!!binary AAAA",
    "!!python/name:os.system", "0x10", "true", "~", "'", "{", "[0.5, 1.0]", "1_000"]))


def _ok_or_user_error(fn) -> None:
    try:
        fn()
    except UserError as e:
        assert "\n" not in str(e)


@FAST
@given(st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), st.text(max_size=15)), VALUES),
                max_size=4))
def test_config_overrides(pairs):
    _ok_or_user_error(lambda: load_config(None, [f"{k}={v}" for k, v in pairs]))


@FAST
@given(st.text(max_size=200))
def test_raw_override_strings(item):
    _ok_or_user_error(lambda: load_config(None, [item]))


HEADER = st.builds(lambda t, n, dims: bytes([0, 0, t, n]) + b"".join(
    d.to_bytes(4, "big") for d in dims), st.sampled_from([8, 9, 13]), st.integers(0, 5),
    st.lists(st.integers(0, 40), max_size=5))


@FAST
@given(st.one_of(st.binary(max_size=300), st.tuples(HEADER, st.binary(max_size=300)).map(
    lambda hb: hb[0] + hb[1])))
@example(bytes([0, 0, 8, 4]) + bytes(16))  # a zero dimension: found by CI's fuzzing
def test_idx_reader(data):
    _ok_or_user_error(lambda: parse_idx(data))


@FAST
@given(st.binary(max_size=300))
def test_idx_reader_on_gzip_files(tmp_path_factory, data):
    from gangaps.data.mnist import _read_idx
    path = tmp_path_factory.mktemp("idx") / "x.gz"
    path.write_bytes(data if data[:1] == b"x" else gzip.compress(data))
    _ok_or_user_error(lambda: _read_idx(path))


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 12), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


SEED_IMAGES = [_png_bytes()]


@FAST
@given(st.one_of(st.binary(max_size=2000), st.tuples(
    st.integers(0, len(SEED_IMAGES[0]) - 1), st.binary(min_size=1, max_size=8)).map(
    lambda p: SEED_IMAGES[0][:p[0]] + p[1] + SEED_IMAGES[0][p[0] + len(p[1]):])))
def test_image_reader(data):
    _ok_or_user_error(lambda: decode_image(data, 16))


@pytest.mark.parametrize("header", [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM",
                                    b"II*\x00", b"RIFF\x00\x00\x00\x00WEBP"])
def test_image_reader_on_bare_headers(header):
    with pytest.raises(UserError):
        decode_image(header + b"\x00" * 64, 16)
