"""Recycling configs (``runs.recycle``): bad ones name the field."""

from __future__ import annotations

import re

import pytest

from everlearn.errors import ConfigError
from everlearn.validation import build_config
from tests.helpers.recycle import recycle_config

pytestmark = pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # LORA


@pytest.mark.parametrize("change, field", [
    (lambda c: c["model"].update(finetune="full"), "model.finetune"),
    (lambda c: c["stages"].pop(), "stages.1.kind"),
    (lambda c: c["recycle"].update(new_base="x"), "recycle.new_base"),
    (lambda c: c.update(strategies=["replay"]), "strategies"),
    (lambda c: c["recycle"].update(policies=[]), "recycle.policies"),
    (lambda c: c["recycle"].update(policies=["reuse"]), "recycle.policies.0"),
    (lambda c: c["recycle"].update(retune_steps=0), "recycle.retune_steps"),
    (lambda c: c["stages"][0].update(kind="cpt"), "stages.0.kind"),
])
def test_bad_recycle_configs_name_the_field(tmp_path, change, field):
    cfg = recycle_config(tmp_path)
    change(cfg)
    with pytest.raises(ConfigError, match=": " + re.escape(field) + ": ") as err:
        build_config(cfg, "recycle.yaml")
    assert "\n" not in str(err.value)
