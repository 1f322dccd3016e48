"""The agent channel refuses to trust the kernel's overflow uid or gid.

Both units run with ``PrivateUsers=yes``: inside their user namespaces every
uid the namespace does not map (any other local user) reads as the overflow
uid, 65534, in ``SO_PEERCRED`` and in ``stat``.  Trusting that id on either
end would trust every local user, so the config naming it is an error."""

from __future__ import annotations

import pytest

from vaultd.agent_channel import ChannelError, channel_from_config, overflow_id
from vaultd.config import parse_config

BASE = 'storage "inmem" {}\nlistener "tcp" {\n  address = "127.0.0.1:8200"\n  tls_disable = true\n}\n'


@pytest.mark.parametrize("key", ["allowed_uids", "allowed_gids", "daemon_uids"])
def test_the_overflow_id_cannot_be_trusted(key: str) -> None:
    kind = "gid" if key == "allowed_gids" else "uid"
    overflow = overflow_id(kind)
    with pytest.raises(ChannelError, match=f"overflow {kind}"):
        channel_from_config(parse_config(f"{BASE}unsealer {{\n  {key} = [{overflow}]\n}}\n", "vaultd.hcl"),
                            environ={})
    # Its neighbours are ordinary ids.
    channel = channel_from_config(parse_config(f"{BASE}unsealer {{\n  {key} = [{overflow - 1}]\n}}\n",
                                               "vaultd.hcl"), environ={})
    assert overflow - 1 in getattr(channel, key)


def test_a_name_that_resolves_to_the_overflow_uid_is_refused_too() -> None:
    import pwd

    try:
        name = pwd.getpwuid(overflow_id("uid")).pw_name
    except KeyError:
        pytest.skip("no user has the overflow uid here")
    with pytest.raises(ChannelError, match="overflow uid"):
        channel_from_config(parse_config(f'{BASE}unsealer {{\n  daemon_uids = ["{name}"]\n}}\n', "vaultd.hcl"),
                            environ={})
