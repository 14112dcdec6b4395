"""API keys: only hashes are kept, both header forms work, wrong keys fail."""

from basalt import apikeys


def test_key_verifies_against_its_record_and_others_do_not() -> None:
    key_id, key = apikeys.make_key()
    rec = apikeys.record_for(key_id, key, "ci")
    assert key not in rec.SerializeToString().decode(errors="ignore")
    assert apikeys.key_id_of(key) == key_id
    assert apikeys.matches(rec, key)
    _, other = apikeys.make_key()
    assert not apikeys.matches(rec, other)
    assert not apikeys.matches(rec, key + "x")


def test_header_forms() -> None:
    assert apikeys.key_from_header("Bearer abc") == "abc"
    assert apikeys.key_from_header("Api-Key abc") == "abc"
    assert apikeys.key_from_header("Basic abc") is None
    assert apikeys.key_from_header("") is None
    assert apikeys.key_from_header(None) is None
