"""``keyvault throttle``: the policy against guessing clients, and unblocking one."""

from __future__ import annotations

import click

from keyvault import ThrottlePolicy

from .output import State, emit, handle_errors, json_option


@click.group()
def throttle() -> None:
    """Throttling of clients that submit too many refused keys (in every process on the store)."""


@throttle.command("set")
@click.option("--client", help="Set this client's own policy (default: the store's default policy).")
@click.option("--max-refused", type=click.IntRange(min=0), help="Refusals allowed per window.")
@click.option("--unlimited", is_flag=True, help="Never throttle (a trusted back office).")
@click.option("--window", "window_seconds", type=click.IntRange(1, 86_400 * 30), default=60, show_default=True,
              help="The counting window, in seconds.")
@click.option("--block", "block_seconds", type=click.IntRange(1, 86_400 * 30), default=300, show_default=True,
              help="How long a client stays blocked, in seconds.")
@json_option
@click.pass_obj
@handle_errors
def throttle_set(state: State, client: str | None, max_refused: int | None, unlimited: bool, window_seconds: int,
                 block_seconds: int, as_json: bool) -> None:
    """Set the throttling policy (the default one, or one client's)."""
    if unlimited == (max_refused is not None):
        raise click.UsageError("give --max-refused N, or --unlimited")
    policy = ThrottlePolicy(None if unlimited else max_refused, window_seconds, block_seconds)
    state.vault().set_throttle_policy(policy, client)
    emit(as_json, dict(policy.to_dict(), client=client), f"throttling for {client or 'every client'}: {_say(policy)}")


@throttle.command("show")
@click.option("--client", help="The policy that applies to this client.")
@json_option
@click.pass_obj
@handle_errors
def throttle_show(state: State, client: str | None, as_json: bool) -> None:
    """Show the policy that applies (to every client, or to one)."""
    policy = state.vault().throttle_policy(client)
    emit(as_json, dict(policy.to_dict(), client=client), f"{client or 'every client'}: {_say(policy)}")


@throttle.command("unblock")
@click.argument("client")
@json_option
@click.pass_obj
@handle_errors
def throttle_unblock(state: State, client: str, as_json: bool) -> None:
    """Lift a client's block now and restart its count."""
    state.vault().unblock(client)
    emit(as_json, {"client": client, "unblocked": True}, f"{client} unblocked")


def _say(policy: ThrottlePolicy) -> str:
    if policy.max_refused is None:
        return "never throttled"
    return (f"at most {policy.max_refused} refused keys per {policy.window_seconds} s, "
            f"else blocked for {policy.block_seconds} s")
