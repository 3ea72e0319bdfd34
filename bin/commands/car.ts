/**
 * `atmirror car verify FILE.car [--did DID] [--key did:key:…] [--json]`
 * `atmirror car ls FILE.car [--json]`
 *
 * Works on a repository CAR file alone: no data directory, no daemon. Only the
 * signing key may come from the network (resolving --did when --key is absent).
 */
import { createReadStream } from 'node:fs'
import { logger } from '@libp2p/logger'
import { loadCar, verifyRepoCar, type RepoCarSummary } from '../../src/repo/verify.ts'
import { decodeCommit } from '../../src/repo/commit.ts'
import { parseDidKey, formatDidKey, type PublicKey } from '../../src/repo/keys.ts'
import { walkMstBatches } from '../../src/repo/mst/walk.ts'
import { CarParseError, MissingBlockError } from '../../src/errors.ts'
import { type CommandContext, UsageError, defineCommand, globalOptions } from './context.ts'
import { LineWriter } from './line-writer.ts'
import { identityConfig, identityOptions, type IdentityConfig } from './node-options.ts'

const USAGE = `usage:
  atmirror car verify FILE.car [--did DID] [--key did:key:...] [--plc URL] [--json]
      Checks that FILE.car holds a complete repository: every block's hash, the
      commit, the MST structure and every record. With --key the commit signature
      is verified against that key; with --did (and no --key) the DID's signing key
      is resolved the way every other command resolves identities (PLC directory:
      --plc or ATMIRROR_PLC). Without either, the signature is NOT checked and the
      output says so.
  atmirror car ls FILE.car [--json]
      Lists the records in MST order: "collection/rkey<TAB>cid" per line, or with
      --json one JSON array of {"path","cid"}, one element per line.`

const options = {
  ...globalOptions,
  ...identityOptions,
  did: { type: 'string' },
  key: { type: 'string' }
} as const

/** Read the CAR in large chunks: fewer, bigger slices for the parser. */
const READ_CHUNK = 1 << 20

export const command = defineCommand({
  usage: USAGE,
  options: options,
  async run ({ values, positionals }, ctx) {
    const [verb, file, ...extra] = positionals
    if (verb === undefined) throw new UsageError(`missing subcommand (verify or ls)`)
    if (file === undefined) throw new UsageError(`missing FILE.car`)
    if (extra.length > 0) throw new UsageError(`unexpected arguments: ${extra.join(' ')}`)
    const json = values.json
    if (verb === 'verify') return await verify(file, { did: values.did, key: values.key, identity: values, json }, ctx)
    if (verb === 'ls') {
      if (values.did !== undefined || values.key !== undefined) throw new UsageError('car ls takes no --did or --key (use car verify)')
      return await list(file, { json }, ctx)
    }
    throw new UsageError(`unknown subcommand ${JSON.stringify(verb)} (verify or ls)`)
  }
})

function readFileChunks (file: string): AsyncIterable<Uint8Array> {
  return createReadStream(file, { highWaterMark: READ_CHUNK })
}

async function verify (file: string, flags: { did?: string, key?: string, identity: { plc?: string, 'handle-resolver'?: string }, json: boolean }, ctx: CommandContext): Promise<number> {
  let key: PublicKey | undefined
  let keySource: string | undefined
  if (flags.key !== undefined) {
    key = parseDidKey(flags.key)
    keySource = '--key'
  } else if (flags.did !== undefined) {
    key = await resolveSigningKey(flags.did, identityConfig(flags.identity, ctx.env), ctx.signal)
    keySource = `resolved from ${flags.did}`
  }
  const summary = await verifyRepoCar(readFileChunks(file), { did: flags.did, key, signal: ctx.signal, log: logger('atmirror:repo') })
  if (flags.json) {
    ctx.stdout.write(JSON.stringify(toJson(summary, key)) + '\n')
    return 0
  }
  const rows: Array<[string, string]> = [
    ['did', summary.did],
    ['rev', summary.rev],
    ['commit', summary.commit.toString()],
    ['data', `${summary.data.toString()} (MST root)`],
    ['records', String(summary.records)],
    ['blocks', `${summary.blocks}${summary.unreachableBlocks > 0 ? ` (+${summary.unreachableBlocks} unreachable from the commit)` : ''}`],
    ['bytes', `${summary.bytes} in repo blocks, ${summary.carBytes} in the CAR`],
    ['signature', key === undefined
      ? 'UNCHECKED: no --key or --did given, so the commit signature was not verified'
      : `verified with ${formatDidKey(key)} (${keySource})`]
  ]
  const width = Math.max(...rows.map(([name]) => name.length))
  ctx.stdout.write(`ok: ${file} holds a complete repository${key === undefined ? ' (signature unchecked)' : ''}\n`)
  ctx.stdout.write(rows.map(([name, value]) => `  ${name.padEnd(width)}  ${value}`).join('\n') + '\n')
  return 0
}

function toJson (summary: RepoCarSummary, key: PublicKey | undefined): Record<string, unknown> {
  return {
    ok: true,
    did: summary.did,
    rev: summary.rev,
    commit: summary.commit.toString(),
    data: summary.data.toString(),
    records: summary.records,
    blocks: summary.blocks,
    bytes: summary.bytes,
    carBlocks: summary.carBlocks,
    carBytes: summary.carBytes,
    unreachableBlocks: summary.unreachableBlocks,
    signature: summary.signature,
    ...(key === undefined ? {} : { key: formatDidKey(key) })
  }
}

/**
 * The DID's current signing key, resolved through the identity layer (loaded only
 * when needed) with the same configuration as every other command: --plc,
 * --handle-resolver and the local-test-network rule for plain http.
 */
async function resolveSigningKey (did: string, config: IdentityConfig, signal: AbortSignal): Promise<PublicKey> {
  const { AtprotoIdentityResolver } = await import('../../src/identity/index.ts')
  const resolver = new AtprotoIdentityResolver(config)
  // only the key matters here: the handle is not looked up
  const identity = await resolver.resolve(did, { signal, verifyHandle: false })
  return identity.signingKey
}

async function list (file: string, flags: { json: boolean }, ctx: CommandContext): Promise<number> {
  const { store, roots } = await loadCar(readFileChunks(file), { signal: ctx.signal })
  if (roots.length === 0) throw new CarParseError('no roots: a repository CAR names its commit as the first root')
  const commitBytes = store.get(roots[0])
  if (commitBytes === undefined) throw new MissingBlockError(roots[0], { what: 'commit' })
  const commit = decodeCommit(commitBytes, roots[0])
  const out = new LineWriter(ctx.stdout)
  // --json: one JSON array, streamed one element per line ("[]" when empty)
  let first = true
  // the tree's structure is checked as it is walked; record blocks are not read (that is car verify's job)
  for await (const batch of walkMstBatches(store, commit.data, { signal: ctx.signal })) {
    if (!out.open) break
    for (const { rpath, cid } of batch) {
      if (flags.json) await out.write(`${first ? '[' : ','}${JSON.stringify({ path: rpath, cid: cid.toString() })}`)
      else await out.write(`${rpath}\t${cid.toString()}`)
      first = false
    }
  }
  if (flags.json) await out.write(first ? '[]' : ']')
  await out.end()
  return 0
}
