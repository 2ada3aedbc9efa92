"""The `gpunet` command line: flags and output for people; the work is done by the packages below.

- `main.py`: the `gpunet` group and the console entry point (`p2p.cli.main:main`); it only
  registers the commands.
- `node.py`: `gpunet node`, the volunteer's command (model files, key file, the node runtime
  started with the OpenAI API inside when `--api` is given, graceful drain on Ctrl-C/SIGTERM).
- `ask.py`: `gpunet ask`, one prompt streamed from the network.
- `peers.py`: `gpunet peers`, the nodes of the network and their models, with filters.
- `gateway.py`: `gpunet gateway`, the OpenAI-compatible API as a light client; the warning
  about an API exposed without a key.
- `pull.py`: `gpunet pull NAME_OR_SHA256`, a model file fetched from the peers that serve it
  (progress bar, `--json`); also what `gpunet node --model NAME` uses.
- `status.py`: `gpunet status`, `pause`, `resume` (like `ollama ps`); `node_control.py` finds
  the data dir's running node and sends it one control op with the node's own key.
- `service.py`: `gpunet service install|uninstall`, a systemd user unit running the node.
- `verify.py`: `gpunet verify FILE`, an evidence file re-checked with the model held locally.
- `identity.py`: `gpunet identity ...`, the identity key file, its passphrase rules (shared with
  the node) and private-network keys.
- `config.py`: `gpunet config`, every setting in effect and where it came from.
- `running_node.py`: one node per data dir (the `node.lock` it holds for its life), the
  node.json it leaves for local clients (written atomically), its ports checked before it loads.
- `ready_hints.py`: the lines printed once a node serves: the command as this shell runs it, and
  a join address other machines can use (or that the node is loopback-only).
- `options.py`: the click options of the settings, generated from p2p/settings.py's table, and
  the call that resolves them (flags > environment > config.toml > defaults).
- `common.py`: what every command does alike: one-line errors (`fail`), logging, running trio,
  reading the network key, finding and resolving bootstrap addresses.

Commands import `common` and `options`; `main` imports the commands; nothing outside this
package imports it (tests aside). Only this package imports click.
"""
