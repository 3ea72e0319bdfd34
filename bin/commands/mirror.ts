/**
 * `atmirror mirror <did|handle>`: one-shot — resolve, fetch the head, sync (full or
 * incremental), verify, store, pin. With a daemon running on the data directory the
 * daemon does it (through its control API); otherwise the directory is opened here
 * (taking its lock) without the peer-to-peer network.
 */
import { createMirrorNode } from '../../src/node.ts'
import { ControlClient } from '../../src/server/control-client.ts'
import type { SyncResultJson } from '../../src/server/control-api.ts'
import type { SyncResult } from '../../src/mirror/sync.ts'
import { CommandUsageError, dataDir, defineCommand, globalOptions, type CommandContext } from './context.ts'
import { formatBytes, identityConfig, identityOptions } from './node-options.ts'
import { ProgressLine } from './progress.ts'

const USAGE = `usage: atmirror mirror DID-or-HANDLE [options]

Mirrors a repo once: resolves the identity, fetches and verifies the head commit,
downloads what is missing (everything the first time, then only what changed),
verifies the whole repo, stores it and pins it. Running it again on an unchanged
repo fetches nothing but the head, and checks the stored copy (every block's hash,
the signature, the tree, every record), refetching any block a damaged disk spoiled.

With a daemon running on the data directory, the daemon does the work.

With --peer, a temporary private-mode node connects to those peers first: when the
PDS gives no verified head, the head comes from them by head exchange (the highest
verified rev among them), and blocks by Bitswap, so the repo can be mirrored while
its PDS is down.

options:
  --data DIR              data directory (ATMIRROR_DATA; default ~/.atmirror)
  --plc URL               PLC directory (ATMIRROR_PLC; default https://plc.directory)
  --handle-resolver URL   handle resolution service (ATMIRROR_HANDLE_RESOLVER)
  --peer MULTIADDR        a mirror to ask (/ip4/…/tcp/…/p2p/<peer id>), repeatable;
                          also the DHT entry point for finding other mirrors
  --progress              show progress on stderr even when it is not a terminal
                          (one line per update, at most 10 a second; also with --json)
  --json                  print the result as one JSON object

On a terminal (and without --json), progress (phase, blocks, bytes, rate) is redrawn
on one stderr line at most 10 times a second.`

const options = { ...globalOptions, ...identityOptions, peer: { type: 'string', multiple: true }, progress: { type: 'boolean', default: false } } as const

export const command = defineCommand({
  usage: USAGE,
  options,
  async run ({ values, positionals }, ctx) {
    if (positionals.length !== 1) throw new CommandUsageError(`${positionals.length === 0 ? 'missing' : 'one'} DID or handle\n${USAGE}`)
    const id = positionals[0] as string
    const json = values.json
    const dir = dataDir(values.data, ctx.env)
    const daemon = await ControlClient.forDataDir(dir)
    let result: SyncResultJson
    if (daemon !== undefined) {
      if (!json) ctx.stderr.write(`a daemon runs on ${dir} (pid ${daemon.daemon.pid}); asking it to mirror ${id}\n`)
      result = (await daemon.client.pin(id, { signal: ctx.signal })).sync
    } else {
      result = await mirrorHere(dir, id, values, ctx, json)
    }
    ctx.stdout.write((json ? JSON.stringify({ ok: true, ...result }) : formatSummary(result)) + '\n')
    return 0
  }
})

async function mirrorHere (dir: string, id: string, values: { plc?: string, 'handle-resolver'?: string, peer?: string[], progress?: boolean }, ctx: CommandContext, json: boolean): Promise<SyncResultJson> {
  const peers = values.peer ?? []
  const node = await createMirrorNode({
    dataDir: dir,
    ...identityConfig(values, ctx.env),
    network: peers.length === 0
      ? false
      : { mode: 'private', listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: peers, mirrors: { peers }, services: { reprovide: false } },
    api: false,
    checkOnStart: false,
    intervalMs: 0
  })
  const tty = ctx.stderr.isTTY === true
  const progress = values.progress === true || (!json && tty) ? new ProgressLine(ctx.stderr, { tty }) : undefined
  try {
    if (peers.length > 0) await node.start()
    // the syncer resolves the identity, once for the whole sync
    const result = await node.syncer.sync(id, {
      signal: ctx.signal,
      // an unchanged repo's stored copy is checked (and repaired) rather than trusted
      check: true,
      onProgress: progress === undefined ? undefined : (p) => { progress.update(p) }
    })
    progress?.done()
    return toJson(result)
  } finally {
    progress?.done()
    await node.stop()
  }
}

function toJson (result: SyncResult): SyncResultJson {
  const { rollback, ...rest } = result
  return { ...rest, commit: result.commit.toString(), fetched: { ...result.fetched }, ...(rollback === undefined ? {} : { rollback: { rev: rollback.rev, commit: rollback.commit.toString() } }) }
}

function formatSummary (result: SyncResultJson): string {
  const { fetched } = result
  const repaired = result.repaired ?? 0
  const what = result.rollback !== undefined
    ? `unchanged: the PDS rolled back to rev ${result.rollback.rev} (older than the stored rev), kept the stored repo`
    : !result.changed
        ? repaired > 0 ? `unchanged; the stored copy had ${repaired} damaged or missing block${repaired === 1 ? '' : 's'}, refetched` : 'unchanged (fetched the head only)'
        : result.full ? 'full sync' : 'incremental sync'
  return [
    `did:      ${result.did}`,
    `rev:      ${result.rev}`,
    `commit:   ${result.commit}`,
    `records:  ${result.records}`,
    `sync:     ${what}`,
    `fetched:  pds=${fetched.pds} bitswap=${fetched.bitswap} local=${fetched.local} (${formatBytes(result.bytes)})`,
    `seconds:  ${result.seconds.toFixed(2)}`
  ].join('\n')
}
