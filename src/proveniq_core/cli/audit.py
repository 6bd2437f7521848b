"""``proveniq audit``: check the tamper-evident audit trail, in the database."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from proveniq_core.cli.connect import DATABASE, with_database
from proveniq_core.cli.options import DatabaseUrl, Home, Json, group
from proveniq_core.cli.render import CliError, err, out, print_json, progress

if TYPE_CHECKING:
    from proveniq_core import db
    from proveniq_core.ledger.audit import ChainReport
    from proveniq_core.ledger.checkpoints import Checkpoint, Outcome, Verdict

CheckpointFile = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        metavar="FILE",
        envvar="PROVENIQ_AUDIT_CHECKPOINT_FILE",
        help="A signed checkpoint (JSON): prove the log still holds exactly what it covered "
        "and only grew since. Exit 2 when it does not, 1 when it cannot be read.",
    ),
]
PublicKey = Annotated[
    Path | None,
    typer.Option(
        "--public-key",
        metavar="PEM",
        envvar="PROVENIQ_AUDIT_PUBLIC_KEY",
        help="The signer's public key (pin your own copy). Default: public-key-<keyId>.pem "
        "beside the checkpoint.",
    ),
]


def _signed_checkpoint(checkpoint: Path, public_key: Path | None) -> Checkpoint:
    """The checkpoint in ``checkpoint`` if its signature holds: else exit 1 (unreadable) or
    2 (not signed by the key)."""
    from proveniq_core.ledger import checkpoints

    try:
        signed = checkpoints.read(checkpoint)
        key_path = public_key or checkpoints.public_key_path(checkpoint.parent, signed.key_id)
        public = checkpoints.read_public_key(key_path)
    except checkpoints.CheckpointError as exc:
        raise CliError(str(exc)) from None
    if not signed.verifies(public):
        raise CliError(
            f"checkpoint signature INVALID: {checkpoint} is not signed by key "
            f"{checkpoints.key_id(public)} ({key_path})",
            code=2,
        )
    return signed


app = group(
    short_help="Verify the tamper-evident audit chain (in the database).",
    help=f"Check the tamper-evident audit trail. {DATABASE}",
)


@app.command("verify")
def verify(
    checkpoint: CheckpointFile = None,
    public_key: PublicKey = None,
    json_out: Json = False,
    home: Home = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Seal pending rows, recompute the hash chain, name the first break.

    Pending audit rows are sealed first; then every row's hash is recomputed in order and
    the first row whose hash does not match is named. With --checkpoint, also prove that
    the log still holds exactly what a signed checkpoint covered (a truncated or rewritten
    and re-chained log fails) and only grew since.

    Exits 0 when the chain is intact, 2 when it is broken.
    """
    from proveniq_core.ledger import audit, checkpoints

    if checkpoint is not None:
        signed = _signed_checkpoint(checkpoint, public_key)

        async def against(pool: db.Pool) -> Verdict:
            with progress("sealing and verifying the audit chain against the checkpoint"):
                await audit.seal(pool)
                return await checkpoints.check(pool, signed)

        verdict = with_database(home, database_url, against)
        if json_out:
            print_json({"ok": verdict.ok, "message": verdict.message})
        elif verdict.ok:
            out.print(verdict.message, markup=False, soft_wrap=True)
        if not verdict.ok:
            if not json_out:
                err.print(verdict.message, markup=False, soft_wrap=True)
            raise typer.Exit(2)
        return

    async def go(pool: db.Pool) -> tuple[int, ChainReport]:
        with progress("sealing and verifying the audit chain"):
            sealed = await audit.seal(pool)
            return sealed, await audit.verify(pool)

    sealed, report = with_database(home, database_url, go)
    if json_out:
        print_json(
            {
                "ok": report.ok,
                "checked": report.checked,
                "sealed": sealed,
                "unsealed": report.unsealed,
                "brokenId": report.broken_id,
                "brokenSeq": report.broken_seq,
                "reason": report.reason,
            }
        )
    elif report.ok:
        out.print(f"audit chain intact: {report.checked} rows verified ({sealed} newly sealed)")
    else:
        err.print(
            Text("audit chain BROKEN", style="red").append(
                f" at row id={report.broken_id} seq={report.broken_seq}: {report.reason}"
                f" ({report.checked} rows verified before it)",
                style="",
            ),
            soft_wrap=True,
        )
    if not report.ok:
        raise typer.Exit(2)


@app.command("checkpoint")
def checkpoint(home: Home = None, database_url: DatabaseUrl = None) -> None:
    """Sign the sealed chain's length and head hash now; write the checkpoint and its event.

    The key: PROVENIQ_AUDIT_SIGNING_KEY_FILE (default audit-signing-key.pem under --home,
    created); the directory: PROVENIQ_AUDIT_CHECKPOINT_DIR (default audit-checkpoints under
    --home). Exits 2
    when the chain no longer extends the last checkpoint (nothing is signed), 1 when the key
    or the directory fails.
    """
    from proveniq_core import logs
    from proveniq_core.config import Settings
    from proveniq_core.ledger import checkpoints

    overrides: dict[str, Any] = {"home": home, "database_url": database_url}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})

    async def go(pool: db.Pool) -> Outcome:
        logs.configure("critical")  # the outcome is this command's one line, not log lines
        with progress("signing a checkpoint of the audit chain"):
            return await checkpoints.take(pool, settings, force=True)

    try:
        outcome = with_database(home, database_url, go)
    except checkpoints.CheckpointError as exc:
        code = 2 if isinstance(exc, checkpoints.ChainBrokenError) else 1
        raise CliError(str(exc), code=code) from None
    if outcome.checkpoint is None:
        raise CliError(f"no checkpoint written: {outcome.reason}")
    cp = outcome.checkpoint
    out.print(
        f"checkpoint seq {cp.seq} head {cp.head_hash[:16]}… signed by key {cp.key_id}: "
        f"{outcome.path}",
        markup=False,
        soft_wrap=True,
    )
