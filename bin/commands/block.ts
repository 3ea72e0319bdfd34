/**
 * `atmirror block get <cid> [--offline] [--did DID] [--json]`: a block's bytes.
 *
 * The local store is read first without opening it (block-file.ts: a block file, or
 * the packed store's LevelDB when no other process has it open). When a running
 * daemon has the packed store open, it is asked instead, for its store alone with
 * `--offline` (a process that holds it without a control API, such as a one-shot
 * `mirror`, makes `--offline` fail with DataDirLockedError). A block that is not stored goes, without
 * `--offline`, through the fetch chain of the backend (backend.ts): a running
 * daemon's (its store, Bitswap, and with `--did` that DID's PDS), or, with no daemon,
 * a node opened here without the peer-to-peer network (the PDS with `--did`).
 * Fetched blocks are printed, not stored: the mirror only keeps blocks some pinned
 * repo holds.
 */
import { BlockNotFoundError, DataDirLockedError } from '../../src/errors.ts'
import { readStoredBlock } from '../../src/mirror/block-file.ts'
import { parseCid, verifyBlock, type CID } from '../../src/repo/cid.ts'
import { UsageError, dataDir, defineCommand, globalOptions, type CommandContext } from './context.ts'
import { identityOptions, storeOptions } from './node-options.ts'

const USAGE = `usage: atmirror block get CID [--offline] [--did DID] [options]

Prints a block's raw bytes to stdout (hash-checked against the CID first).

  --offline               only the local store; never touches the network
  --did DID               the repo the block belongs to: lets the fetch chain ask
                          that DID's PDS when the block is not stored here
  --json                  one JSON object instead of raw bytes:
                          {"ok":true,"cid","size","base64"}

With a daemon running on the data directory, --offline asks it for what its store
holds. A block not stored here is fetched through the running daemon (Bitswap from other
mirrors, and the PDS with --did); without a daemon only the PDS can be asked, with
--did. Fetched blocks are printed, not stored.

options:
  --data DIR              data directory (ATMIRROR_DATA; default ~/.atmirror)
  --blockstore KIND       level (packed; the default) or fs (a file per block) for a
                          new data directory; an existing one keeps the kind it has
  --plc URL               PLC directory, with --did and no daemon (ATMIRROR_PLC)
  --handle-resolver URL   handle resolution service (ATMIRROR_HANDLE_RESOLVER)`

const options = {
  ...globalOptions,
  ...identityOptions,
  ...storeOptions,
  offline: { type: 'boolean', default: false },
  did: { type: 'string' }
} as const

export const command = defineCommand({
  usage: USAGE,
  options,
  async run ({ values, positionals }, ctx) {
    const [verb, text, ...rest] = positionals
    if (verb !== 'get') throw new UsageError(`${verb === undefined ? 'missing subcommand' : `unknown subcommand ${JSON.stringify(verb)}`} (get)`)
    if (text === undefined || rest.length > 0) throw new UsageError('block get takes one CID')
    if (values.offline && values.did !== undefined) throw new UsageError('--did asks the PDS, --offline forbids it: pick one')
    const cid = parseCid(text)
    // read only: the store is never opened ('locked': a daemon has the packed store, ask it)
    const local = await readStoredBlock(dataDir(values.data, ctx.env), cid)
    if (local !== undefined && local !== 'locked') {
      verifyBlock(cid, local)
      return print(cid, local, values.json, ctx)
    }
    if (values.offline && local === 'locked') return print(cid, await fromDaemonStore(dataDir(values.data, ctx.env), cid, ctx.signal), values.json, ctx)
    if (values.offline) throw new BlockNotFoundError(cid, { source: 'local' })
    // loaded only past the local read: a stored block is printed without them
    const { openBackend } = await import('./backend.ts')
    const backend = await openBackend(values, ctx)
    try {
      if (backend.daemon === undefined && values.did === undefined) {
        // the node opened here has no network, and a bare CID names no PDS
        ctx.stderr.write('note: not stored here, and no daemon runs; only --did DID lets the PDS be asked\n')
        throw new BlockNotFoundError(cid, { source: 'local' })
      }
      const bytes = await backend.api.getBlock(cid, { did: values.did, signal: ctx.signal })
      verifyBlock(cid, bytes)
      return print(cid, bytes, values.json, ctx)
    } finally {
      await backend.close()
    }
  }
})

/** The block from the store of the daemon that holds the data directory (never fetched). */
async function fromDaemonStore (dir: string, cid: CID, signal: AbortSignal): Promise<Uint8Array> {
  const { ControlClient } = await import('../../src/server/control-client.ts')
  const daemon = await ControlClient.forDataDir(dir)
  if (daemon === undefined) throw new DataDirLockedError(dir)
  const bytes = await daemon.client.getBlock(cid, { local: true, signal })
  verifyBlock(cid, bytes)
  return bytes
}

function print (cid: CID, bytes: Uint8Array, json: boolean, ctx: CommandContext): number {
  if (json) ctx.stdout.write(JSON.stringify({ ok: true, cid: cid.toString(), size: bytes.byteLength, base64: Buffer.from(bytes).toString('base64') }) + '\n')
  else ctx.stdout.write(bytes)
  return 0
}
