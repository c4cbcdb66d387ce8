"""``blagpt list`` and ``blagpt config``: what is installed, and what a run config resolves to."""

from __future__ import annotations

import click

from . import CONTEXT, _config_options, _resolve, _table, _warn_broken, cli


@cli.command("list", context_settings=CONTEXT)
def list_cmd():
    """List installed models (with their presets), optimizers, tokenizers and tasks (nothing is built or loaded).

    \b
    Example:
      blagpt list
    """
    from ..plugin.registry import get_registry

    reg = get_registry()
    rows = [("MODEL", "PLUGIN", "TOKENIZERS", "PRESETS (model.preset=A+B)", "DESCRIPTION")]
    for name, spec in sorted(reg.models.items()):
        rows.append((name, reg.owner_of("model", name).dist, ",".join(spec.tokenizers), ",".join(spec.presets) or "-", spec.description))
    _table(rows)
    click.echo("")
    rows = [("OPTIMIZER", "PLUGIN", "DESCRIPTION")]
    for name, spec in sorted(reg.optimizers.items()):
        rows.append((name, reg.owner_of("optimizer", name).dist, spec.description))
    _table(rows)
    click.echo("")
    rows = [("TOKENIZER", "PLUGIN", "DESCRIPTION")]
    for name, spec in sorted(reg.tokenizers.items()):
        ref = f"{name}:{spec.argument.split()[0]}" if spec.argument else name
        rows.append((ref, reg.owner_of("tokenizer", name).dist, spec.description))
    _table(rows)
    click.echo("")
    rows = [("TASK (--task)", "PLUGIN", "DESCRIPTION")]
    for name, spec in sorted(reg.tasks.items()):
        rows.append((name, reg.owner_of("task", name).dist, spec.description))
    _table(rows)
    _warn_broken(reg)


@cli.group(context_settings=CONTEXT)
def config():
    """Show the resolved run config or its JSON Schema."""


@config.command("show", context_settings=CONTEXT)
@_config_options
def config_show(model, optimizer, task, config_file, sets):
    """Print the resolved config (defaults < presets < --config < --set) as YAML.

    \b
    Examples:
      blagpt config show --model blagpt
      blagpt config show --model blagpt --set model.preset=gpt2+124m > run.yaml
    """
    click.echo(_resolve(model, optimizer, config_file, sets, task=task).to_yaml(), nl=False)


@config.command("schema", context_settings=CONTEXT)
@click.option("--model", help="Type the model section by this model's config (default: the generic base).")
@click.option("--optimizer", default="adamw", show_default=True, help="Type the optimizer section by this optimizer's config.")
@click.option("--task", default="lm", show_default=True, help="Type the task section by this task's config (with --model).")
def config_schema(model, optimizer, task):
    """Print the run config's JSON Schema.

    \b
    Examples:
      blagpt config schema
      blagpt config schema --model blagpt --optimizer soap
      blagpt config schema --model blagpt --task mqar
    """
    import json

    from ..config import RunConfig, concrete_class
    from ..plugin.registry import get_registry

    cls = concrete_class(get_registry(), model, optimizer, task) if model else RunConfig
    click.echo(json.dumps(cls.model_json_schema(), indent=2))
