/**
 * `atmirror export <did|handle> -o FILE.car`: the stored repo as a CAR file (commit
 * first). Nothing is fetched: this writes what the mirror holds.
 *
 * Without a daemon the data directory is opened here (taking its lock). With one,
 * the repo's state comes from its control API and the blocks as stored-blocks.ts
 * says (the block files, or the daemon); if the daemon collects a block of that commit meanwhile (the repo
 * advanced), the export is retried once from the new state.
 */
import { createWriteStream } from 'node:fs'
import { rename, unlink } from 'node:fs/promises'
import { pipeline } from 'node:stream/promises'
import { Readable } from 'node:stream'
import { MissingBlockError, NotPinnedError, RepoNotMirroredError } from '../../src/errors.ts'
import type { MirrorNode } from '../../src/node.ts'
import { exportRepoCar } from '../../src/mirror/export.ts'
import { isExportable } from '../../src/mirror/status-policy.ts'
import { parseCid } from '../../src/repo/cid.ts'
import { openBackend } from './backend.ts'
import { storedBlocks } from './stored-blocks.ts'
import { UsageError, defineCommand, globalOptions } from './context.ts'
import { formatBytes, identityOptions, storeOptions } from './node-options.ts'

const USAGE = `usage: atmirror export DID-or-HANDLE -o FILE.car [options]

Writes the stored copy of a repo as a CAR file: the signed commit first (the only
root), then the MST and records in pre-order. 'atmirror car verify' and the
reference implementation accept it. Use '-o -' for stdout.

options:
  -o, --output FILE       where to write (required; '-' for stdout)
  --data DIR              data directory (ATMIRROR_DATA; default ~/.atmirror)
  --blockstore KIND       level (packed; the default) or fs (a file per block) for a
                          new data directory; an existing one keeps the kind it has
  --plc URL               PLC directory, to resolve a handle (ATMIRROR_PLC)
  --handle-resolver URL   handle resolution service (ATMIRROR_HANDLE_RESOLVER)
  --json                  print the result as one JSON object`

const options = { ...globalOptions, ...identityOptions, ...storeOptions, output: { type: 'string', short: 'o' } } as const

export const command = defineCommand({
  usage: USAGE,
  options,
  async run ({ values, positionals }, ctx) {
    if (positionals.length !== 1) throw new UsageError(`${positionals.length === 0 ? 'missing' : 'one'} DID or handle`)
    if (values.output === undefined || values.output === '') throw new UsageError(`missing -o FILE.car`)
    const id = positionals[0] as string
    const output = values.output
    const json = values.json
    if (output === '-' && json) throw new UsageError('--json cannot be combined with -o - (the CAR goes to stdout)')
    const backend = await openBackend(values, ctx)
    let written: { did: string, commit: string, rev: string, bytes: number }
    const { node } = backend
    if (node === undefined) {
      const store = storedBlocks(backend, ctx.signal)
      const attempt = async (): Promise<typeof written> => {
        const repo = await backend.api.repo(id, { signal: ctx.signal })
        if (repo.commit === undefined || repo.rev === undefined || !isExportable(repo)) {
          throw new RepoNotMirroredError(repo.did)
        }
        const bytes = await writeOutput(output, exportRepoCar(store, parseCid(repo.commit), { signal: ctx.signal }), ctx.stdout)
        return { did: repo.did, commit: repo.commit, rev: repo.rev, bytes }
      }
      try {
        written = await attempt()
      } catch (err) {
        if (!(err instanceof MissingBlockError)) throw err
        written = await attempt() // the repo advanced under us; its new state is complete
      }
    } else {
      try {
        const did = await storedDid(node, id, ctx.signal)
        const state = await node.store.getState(did)
        if (!isExportable(state)) throw new RepoNotMirroredError(did)
        const bytes = await writeOutput(output, node.exportCar(did, { signal: ctx.signal }), ctx.stdout)
        written = { did, commit: state.commit, rev: state.rev, bytes }
      } finally {
        await backend.close()
      }
    }
    if (output !== '-') {
      ctx.stdout.write((json
        ? JSON.stringify({ ok: true, ...written, file: output })
        : `wrote ${output}: ${written.did} rev=${written.rev} commit=${written.commit} (${formatBytes(written.bytes)})`) + '\n')
    }
    return 0
  }
})

/** The DID for a DID or handle: a handle is looked up among stored repos first, then resolved. */
async function storedDid (node: MirrorNode, id: string, signal: AbortSignal): Promise<string> {
  if (id.startsWith('did:')) return id
  const handle = id.replace(/^@/, '').toLowerCase()
  for (const state of await node.store.listStates()) {
    if (state.handle?.toLowerCase() === handle) return state.did
  }
  const { did } = await node.identity.resolve(id, { signal })
  if (await node.store.getState(did) === undefined) throw new NotPinnedError(did)
  return did
}

/** Streams CAR chunks to a file (written to a temp name, renamed when complete) or stdout. */
async function writeOutput (output: string, chunks: AsyncIterable<Uint8Array>, stdout: NodeJS.WritableStream): Promise<number> {
  let bytes = 0
  const counted = (async function * () {
    for await (const chunk of chunks) {
      bytes += chunk.byteLength
      yield chunk
    }
  })()
  if (output === '-') {
    await pipeline(Readable.from(counted), stdout, { end: false })
    return bytes
  }
  const tmp = `${output}.${process.pid}.tmp`
  try {
    await pipeline(Readable.from(counted), createWriteStream(tmp))
    await rename(tmp, output)
  } catch (err) {
    await unlink(tmp).catch(() => {})
    throw err
  }
  return bytes
}
