/**
 * Reading what is mirrored, offline:
 *
 * - `atmirror records DID-or-HANDLE [COLLECTION] [--values]`: the records of a stored
 *   repo in MST order (at:// URI and CID; the value with --values);
 * - `atmirror record get at://DID-or-HANDLE/COLLECTION/RKEY`: one record as JSON.
 *
 * The repo's stored commit comes from the backend (backend.ts: the running daemon,
 * or the data directory opened here); the tree and records as stored-blocks.ts
 * says (the store opened here, the block files, or the daemon). Nothing is fetched. If
 * the daemon collects a block of that commit meanwhile (the repo advanced), the
 * read starts over once from the new state.
 */
import { MissingBlockError, RecordNotFoundError, RepoNotMirroredError } from '../../src/errors.ts'
import type { MirrorApi } from '../../src/mirror/api.ts'
import { holdsBlocks } from '../../src/mirror/status-policy.ts'
import type { ReadonlyBlockStore } from '../../src/repo/block-store.ts'
import { decodeCbor } from '../../src/repo/cbor.ts'
import { parseCid, verifyBlock, type CID } from '../../src/repo/cid.ts'
import { decodeCommit } from '../../src/repo/commit.ts'
import { dataModelToJson } from '../../src/repo/data-model.ts'
import { MstEditor } from '../../src/repo/mst/mutate.ts'
import { walkMstBatches } from '../../src/repo/mst/walk.ts'
import { isValidNsid, isValidRecordKey } from '../../src/repo/syntax.ts'
import { openBackend } from './backend.ts'
import { storedBlocks } from './stored-blocks.ts'
import { UsageError, defineCommand, globalOptions, type CommandContext } from './context.ts'
import { LineWriter } from './line-writer.ts'
import { identityOptions, storeOptions } from './node-options.ts'

const RECORDS_USAGE = `usage: atmirror records DID-or-HANDLE [COLLECTION] [--values] [options]

Lists the records of a mirrored repo, in MST order (by collection, then record
key): "at://did/collection/rkey<TAB>cid" per line. Reads the stored copy only;
nothing is fetched, and it works next to a running daemon.

options:
  --values                also print each record's value (JSON, after the CID)
  --data DIR              data directory (ATMIRROR_DATA; default ~/.atmirror)
  --blockstore KIND       level (packed; the default) or fs (a file per block) for a
                          new data directory; an existing one keeps the kind it has
  --plc URL               PLC directory, to resolve a handle not stored here (ATMIRROR_PLC)
  --handle-resolver URL   handle resolution service (ATMIRROR_HANDLE_RESOLVER)
  --json                  one JSON array of {"uri","cid"} ("value" too with --values),
                          one element per line`

const RECORD_USAGE = `usage: atmirror record get at://DID-or-HANDLE/COLLECTION/RKEY [options]

Prints one record of a mirrored repo, decoded to JSON (links as {"$link"}, bytes
as {"$bytes"}). Reads the stored copy only; nothing is fetched.

options:
  --data DIR              data directory (ATMIRROR_DATA; default ~/.atmirror)
  --blockstore KIND       level (packed; the default) or fs (a file per block) for a
                          new data directory; an existing one keeps the kind it has
  --plc URL               PLC directory, to resolve a handle not stored here (ATMIRROR_PLC)
  --handle-resolver URL   handle resolution service (ATMIRROR_HANDLE_RESOLVER)
  --json                  {"ok":true,"uri","cid","value"}`

export const recordsCommand = defineCommand({
  usage: RECORDS_USAGE,
  options: { ...globalOptions, ...identityOptions, ...storeOptions, values: { type: 'boolean', default: false } },
  async run ({ values, positionals }, ctx) {
    if (positionals.length < 1 || positionals.length > 2) throw new UsageError(positionals.length === 0 ? 'missing DID or handle' : `unexpected arguments: ${positionals.slice(2).join(' ')}`)
    const [id, collection] = positionals as [string, string | undefined]
    if (collection !== undefined && !isValidNsid(collection)) throw new UsageError(`not a collection (NSID): ${JSON.stringify(collection)}`)
    return await withStoredRepo(values, id, ctx, async (repo) => {
      const out = new LineWriter(ctx.stdout)
      let first = true
      const prefix = collection === undefined ? undefined : `${collection}/`
      let past = false
      for await (const batch of walkMstBatches(repo.blocks, repo.data, { signal: ctx.signal })) {
        if (!out.open || past) break
        for (const { rpath, cid } of batch) {
          if (prefix !== undefined && !rpath.startsWith(prefix)) {
            // keys sort by collection first: past the one asked for, nothing more matches
            past = rpath > prefix
            if (past) break
            continue
          }
          const uri = `at://${repo.did}/${rpath}`
          const value = values.values ? await readRecord(repo.blocks, cid) : undefined
          if (values.json) {
            await out.write(`${first ? '[' : ','}${JSON.stringify(values.values ? { uri, cid: cid.toString(), value } : { uri, cid: cid.toString() })}`)
          } else {
            await out.write(`${uri}\t${cid.toString()}${values.values ? `\t${JSON.stringify(value)}` : ''}`)
          }
          first = false
        }
      }
      if (values.json) await out.write(first ? '[]' : ']')
      await out.end()
      return 0
    })
  }
})

export const recordCommand = defineCommand({
  usage: RECORD_USAGE,
  options: { ...globalOptions, ...identityOptions, ...storeOptions },
  async run ({ values, positionals }, ctx) {
    const [verb, uri, ...rest] = positionals
    if (verb !== 'get') throw new UsageError(`${verb === undefined ? 'missing subcommand' : `unknown subcommand ${JSON.stringify(verb)}`} (get)`)
    if (uri === undefined || rest.length > 0) throw new UsageError('record get takes one at:// URI')
    const { authority, collection, rkey } = parseRecordUri(uri)
    return await withStoredRepo(values, authority, ctx, async (repo) => {
      const rpath = `${collection}/${rkey}`
      const cid = await new MstEditor(repo.blocks).get(repo.data, rpath, { signal: ctx.signal })
      const canonical = `at://${repo.did}/${rpath}`
      if (cid === null) throw new RecordNotFoundError(canonical, { rev: repo.rev })
      const value = await readRecord(repo.blocks, cid)
      ctx.stdout.write((values.json
        ? JSON.stringify({ ok: true, uri: canonical, cid: cid.toString(), value })
        : JSON.stringify(value, null, 2)) + '\n')
      return 0
    })
  }
})

/** `at://authority/collection/rkey`, each part checked. */
function parseRecordUri (uri: string): { authority: string, collection: string, rkey: string } {
  const match = /^at:\/\/([^/?#]+)\/([^/?#]+)\/([^/?#]+)$/.exec(uri)
  if (match === null) throw new UsageError(`not a record URI (at://DID-or-HANDLE/COLLECTION/RKEY): ${JSON.stringify(uri)}`)
  const [, authority, collection, rkey] = match as unknown as [string, string, string, string]
  if (!isValidNsid(collection)) throw new UsageError(`not a collection (NSID): ${JSON.stringify(collection)}`)
  if (!isValidRecordKey(rkey)) throw new UsageError(`not a record key: ${JSON.stringify(rkey)}`)
  return { authority: decodeURIComponent(authority), collection, rkey }
}

interface StoredRepo {
  did: string
  rev: string
  /** The MST root of the stored commit. */
  data: CID
  blocks: ReadonlyBlockStore
}

/**
 * Runs `read` on the stored repo of `id`: its commit from the backend, its blocks
 * from the block files. Once more from the new state if a block went missing (the
 * daemon advanced the repo and collected the old blocks meanwhile).
 */
async function withStoredRepo (values: { data?: string, plc?: string, 'handle-resolver'?: string }, id: string, ctx: CommandContext, read: (repo: StoredRepo) => Promise<number>): Promise<number> {
  const backend = await openBackend(values, ctx)
  try {
    const blocks = storedBlocks(backend, ctx.signal)
    const attempt = async (): Promise<number> => await read(await storedRepo(backend.api, id, blocks, ctx.signal))
    try {
      return await attempt()
    } catch (err) {
      if (!(err instanceof MissingBlockError) || backend.daemon === undefined) throw err
      return await attempt()
    }
  } finally {
    await backend.close()
  }
}

async function storedRepo (api: MirrorApi, id: string, blocks: ReadonlyBlockStore, signal: AbortSignal): Promise<StoredRepo> {
  const repo = await api.repo(id, { signal })
  if (repo.commit === undefined || repo.rev === undefined || !holdsBlocks(repo)) {
    throw new RepoNotMirroredError(repo.did)
  }
  const commitCid = parseCid(repo.commit)
  const bytes = await blocks.get(commitCid)
  if (bytes === undefined) throw new MissingBlockError(commitCid, { what: 'commit' })
  const commit = decodeCommit(bytes, commitCid)
  return { did: repo.did, rev: commit.rev, data: commit.data, blocks }
}

/** A record block, hash-checked and decoded to atproto JSON. */
async function readRecord (blocks: ReadonlyBlockStore, cid: CID): Promise<unknown> {
  const bytes = await blocks.get(cid)
  if (bytes === undefined) throw new MissingBlockError(cid, { what: 'record' })
  verifyBlock(cid, bytes)
  return dataModelToJson(decodeCbor(bytes, { cid }))
}
