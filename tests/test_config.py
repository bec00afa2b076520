import pytest

from reelrec.config import load_settings
from reelrec.errors import InvalidInput


def test_defaults_then_toml_then_env_then_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REELREC_DATA_DIR", raising=False)
    assert load_settings().signals.complete == 4.0
    (tmp_path / "reelrec.toml").write_text('data_dir = "from-toml"\n[signals]\ncomplete = 5.0\n')
    s = load_settings()
    assert str(s.data_dir) == "from-toml" and s.signals.complete == 5.0
    monkeypatch.setenv("REELREC_DATA_DIR", "from-env")
    monkeypatch.setenv("REELREC_SIGNALS__COMPLETE", "6")
    s = load_settings()
    assert str(s.data_dir) == "from-env" and s.signals.complete == 6.0
    assert str(load_settings(data_dir="from-flag").data_dir) == "from-flag"


def test_wrong_type_is_an_error_naming_the_field(monkeypatch):
    monkeypatch.setenv("REELREC_SIGNALS__COMPLETE", "lots")
    with pytest.raises(InvalidInput, match="signals.complete"):
        load_settings()
    monkeypatch.setenv("REELREC_SIGNALS__COMPLETE", "-1")
    with pytest.raises(InvalidInput, match="signals.complete"):
        load_settings()


def test_settings_survive_a_json_round_trip():
    s = load_settings(data_dir="x")
    assert type(s).model_validate_json(s.model_dump_json()) == s
