/**
 * `atmirror mirror <did|handle>`: one-shot — resolve, fetch the head, sync (full or
 * incremental), verify, store, pin. With a daemon running on the data directory the
 * daemon does it (through its control API); otherwise the directory is opened here
 * (taking its lock) without the peer-to-peer network.
 */
import type { SyncResult } from '../../src/mirror/sync.ts'
import { syncResultJson } from '../../src/server/control-api.ts'
import { openBackend } from './backend.ts'
import { UsageError, defineCommand, globalOptions } from './context.ts'
import { DEFAULT_MAX_BLOB_SIZE } from '../../src/mirror/blobs.ts'
import { blobOptions, formatBlobs, formatBytes, identityOptions, sizeFlag, storeOptions } from './node-options.ts'
import { progressFor } from './progress.ts'

const USAGE = `usage: atmirror mirror DID-or-HANDLE [options]

Mirrors a repo once: resolves the identity, fetches and verifies the head commit,
downloads what is missing (everything the first time, then only what changed),
verifies the whole repo, stores it and pins it. Running it again on an unchanged
repo fetches nothing but the head, and checks the stored copy (every block's hash,
the signature, the tree, every record), refetching any block a damaged disk spoiled.

With a daemon running on the data directory, the daemon does the work (with its
own --plc, --handle-resolver and --peer; those given here are then ignored, with
a warning).

With --peer, a temporary private-mode node connects to those peers first: when the
PDS gives no verified head, the head comes from them by head exchange (the highest
verified rev among them), and blocks by Bitswap, so the repo can be mirrored while
its PDS is down.

options:
  --data DIR              data directory (ATMIRROR_DATA; default ~/.atmirror)
  --blockstore KIND       level (packed; the default) or fs (a file per block) for a
                          new data directory; an existing one keeps the kind it has
  --plc URL               PLC directory (ATMIRROR_PLC; default https://plc.directory)
  --handle-resolver URL   handle resolution service (ATMIRROR_HANDLE_RESOLVER)
  --peer MULTIADDR        a mirror to ask (/ip4/…/tcp/…/p2p/<peer id>), repeatable;
                          also the DHT entry point for finding other mirrors
  --no-blobs              do not mirror the repo's blobs (images, video); kept with the
                          pin, so its later syncs skip them too
  --max-blob-size SIZE    largest blob mirrored, bytes or with K/M/G (default 100M;
                          a daemon uses its own)
  --progress              show progress on stderr even when it is not a terminal
                          (one line per update, at most 10 a second; also with --json)
  --json                  print the result as one JSON object ({"ok":true,…}; "source"
                          names where the head came from: pds:<url> or peer:<id>)

On a terminal (and without --json), progress (phase, blocks, bytes, rate) is redrawn
on one stderr line at most 10 times a second.`

const options = { ...globalOptions, ...identityOptions, ...blobOptions, ...storeOptions, peer: { type: 'string', multiple: true }, progress: { type: 'boolean', default: false } } as const

export const command = defineCommand({
  usage: USAGE,
  options,
  async run ({ values, positionals }, ctx) {
    if (positionals.length !== 1) throw new UsageError(`${positionals.length === 0 ? 'missing' : 'one'} DID or handle`)
    const id = positionals[0] as string
    const json = values.json
    const peers = values.peer ?? []
    const backend = await openBackend(values, ctx, {
      daemonIgnores: ['peer', 'max-blob-size'],
      // with --peer, a temporary private-mode node that connects to those peers first
      local: peers.length === 0
        ? { blobs: { maxBlobSize: sizeFlag('--max-blob-size', values['max-blob-size'], DEFAULT_MAX_BLOB_SIZE) } }
        : { blobs: { maxBlobSize: sizeFlag('--max-blob-size', values['max-blob-size'], DEFAULT_MAX_BLOB_SIZE) }, network: { mode: 'private', listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap: peers, mirrors: { peers }, services: { reprovide: false } } },
      start: peers.length > 0
    })
    const progress = progressFor(ctx, { progress: values.progress, json })
    try {
      if (backend.daemon !== undefined && !json) ctx.stderr.write(`a daemon runs on ${backend.dir} (pid ${backend.daemon.pid}); asking it to mirror ${id}\n`)
      // an unchanged repo's stored copy is checked (and repaired) rather than trusted
      const sync = await backend.api.mirror(id, { signal: ctx.signal, onProgress: progress?.onProgress, check: true, blobs: values['no-blobs'] === true ? false : undefined })
      progress?.done()
      ctx.stdout.write((json ? JSON.stringify({ ok: true, ...syncResultJson(sync) }) : formatSummary(sync)) + '\n')
      return 0
    } finally {
      progress?.done()
      await backend.close()
    }
  }
})

function formatSummary (result: SyncResult): string {
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
    `commit:   ${result.commit.toString()}`,
    `records:  ${result.records}`,
    `sync:     ${what}`,
    `head:     ${result.source}`,
    ...(result.identitySource === undefined ? [] : [`identity: ${result.identitySource}`]),
    `fetched:  pds=${fetched.pds} bitswap=${fetched.bitswap} local=${fetched.local} (${formatBytes(result.bytes)})${formatBlobs(result)}`,
    `seconds:  ${result.seconds.toFixed(2)}`
  ].join('\n')
}
