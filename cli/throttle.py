"""``keyvault throttle``: the policy against guessing clients and cards, unblocking a client, unlocking a card."""

from __future__ import annotations

import click

from keyvault import ThrottlePolicy
from keyvault.engine import CARD_ATTEMPTS

from .output import State, emit, handle_errors, json_option


@click.group()
def throttle() -> None:
    """Throttling of clients that submit too many refused keys, and of imported cards given wrong passwords."""


@throttle.command("set")
@click.option("--client", help="Set this client's own policy (default: the store's default policy).")
@click.option("--max-refused", type=click.IntRange(min=0), help="Refusals allowed per window.")
@click.option("--unlimited", is_flag=True, help="Never throttle (a trusted back office).")
@click.option("--window", "window_seconds", type=click.IntRange(1, 86_400 * 30), default=60, show_default=True,
              help="The counting window, in seconds.")
@click.option("--block", "block_seconds", type=click.IntRange(1, 86_400 * 30), default=300, show_default=True,
              help="How long a client stays blocked, in seconds.")
@click.option("--card-attempts", type=click.IntRange(1, 1_000_000),
              help=f"Wrong passwords that lock an imported card, store-wide (default {CARD_ATTEMPTS}; "
                   "kept as it is when not given).")
@click.option("--no-card-lock", is_flag=True, help="Never lock imported cards (not advised for short passwords).")
@json_option
@click.pass_obj
@handle_errors
def throttle_set(state: State, client: str | None, max_refused: int | None, unlimited: bool, window_seconds: int,
                 block_seconds: int, card_attempts: int | None, no_card_lock: bool, as_json: bool) -> None:
    """Set the throttling policy (the default one, or one client's)."""
    if unlimited == (max_refused is not None):
        raise click.UsageError("give --max-refused N, or --unlimited")
    if client and (card_attempts is not None or no_card_lock):
        raise click.UsageError("the card lock is store-wide: set --card-attempts without --client")
    if card_attempts is not None and no_card_lock:
        raise click.UsageError("give --card-attempts N, or --no-card-lock")
    vault = state.vault()
    cards = None if no_card_lock else card_attempts or vault.throttle_policy().card_attempts
    policy = ThrottlePolicy(None if unlimited else max_refused, window_seconds, block_seconds, cards)
    vault.set_throttle_policy(policy, client)
    emit(as_json, dict(policy.to_dict(), client=client), f"throttling for {client or 'every client'}: "
         f"{_say(policy, client is None)}")


@throttle.command("show")
@click.option("--client", help="The policy that applies to this client.")
@json_option
@click.pass_obj
@handle_errors
def throttle_show(state: State, client: str | None, as_json: bool) -> None:
    """Show the policy that applies (to every client, or to one)."""
    vault = state.vault()
    policy = vault.throttle_policy(client)
    cards = vault.throttle_policy().card_attempts  # store-wide: the default policy's
    emit(as_json, dict(policy.to_dict(), client=client, card_attempts=cards),
         f"{client or 'every client'}: {_say(policy, False)}; {_say_cards(cards)}")


@throttle.command("unblock")
@click.argument("client")
@json_option
@click.pass_obj
@handle_errors
def throttle_unblock(state: State, client: str, as_json: bool) -> None:
    """Lift a client's block now and restart its count."""
    state.vault().unblock(client)
    emit(as_json, {"client": client, "unblocked": True}, f"{client} unblocked")


@throttle.command("locked")
@json_option
@click.pass_obj
@handle_errors
def throttle_locked(state: State, as_json: bool) -> None:
    """List the imported cards given wrong passwords, and those locked."""
    cards = state.vault().locked_cards()
    if as_json:
        for card in cards:
            emit(True, card.to_dict(), "")
        return
    if not cards:
        click.echo("no imported card was given a wrong password")
    for card in cards:
        locked = f"LOCKED since {card['locked_at']}" if card["locked_at"] else "not locked"
        click.echo(f"{card['card_number']}: {card['wrong_passwords']} wrong passwords, {locked}")


@throttle.command("unlock-card")
@click.argument("card_number")
@json_option
@click.pass_obj
@handle_errors
def throttle_unlock_card(state: State, card_number: str, as_json: bool) -> None:
    """Unlock an imported card locked after too many wrong passwords, and forget them (a support action)."""
    had = state.vault().unlock_card(card_number)
    emit(as_json, {"card_number": card_number, "unlocked": had},
         f"{card_number} unlocked" if had else f"{card_number} had no wrong passwords: nothing to unlock")


def _say(policy: ThrottlePolicy, cards: bool) -> str:
    if policy.max_refused is None:
        said = "never throttled"
    else:
        said = (f"at most {policy.max_refused} refused keys per {policy.window_seconds} s (the next one blocks), "
                f"else blocked for {policy.block_seconds} s: {policy.guesses_per_day():,} guesses a day at most")
    return f"{said}; {_say_cards(policy.card_attempts)}" if cards else said


def _say_cards(card_attempts: int | None) -> str:
    if card_attempts is None:
        return "imported cards never lock"
    return f"an imported card locks after {card_attempts} wrong passwords"
