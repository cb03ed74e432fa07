"""A handler whose error message carries credentials, as a careless library's might."""

from ringez_worker.handlers import Context, Event, Router

router = Router()


@router.on("call.failed")
async def leaky(event: Event, ctx: Context) -> None:
    key = ctx.settings.ringez_api_key.get_secret_value() if ctx.settings.ringez_api_key else ""
    secret = ctx.settings.webhook_secrets[0].decode()
    ctx.log.info("leaky.about_to_fail", note=f"using {key} and {secret}")
    raise RuntimeError(f"upstream rejected key={key} secret={secret}")
