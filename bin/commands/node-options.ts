/**
 * Options shared by the commands that run a mirror node (daemon) or open the data
 * directory directly (pin, when no daemon runs): where identities resolve, and how
 * results print.
 */
import type { ParseArgsConfig } from 'node:util'
import { BLOCKSTORE_KINDS, type BlockstoreKind } from '../../src/mirror/blockstore.ts'
import type { SyncResult } from '../../src/mirror/sync.ts'
import { UsageError, plcUrl } from './context.ts'

/** Flags for identity resolution, on top of the global --plc. */
export const identityOptions = {
  'handle-resolver': { type: 'string' },
  'allow-private-network': { type: 'boolean' }
} as const satisfies NonNullable<ParseArgsConfig['options']>

/** `--blockstore fs|level`, for the verbs that open a data directory. */
export const storeOptions = {
  blockstore: { type: 'string' }
} as const satisfies NonNullable<ParseArgsConfig['options']>

/** `--blockstore`: the kind a new data directory gets (an existing one must match). */
export function blockstoreFlag (value: string | undefined): BlockstoreKind | undefined {
  if (value === undefined) return undefined
  if (!(BLOCKSTORE_KINDS as readonly string[]).includes(value)) throw new UsageError(`--blockstore must be ${BLOCKSTORE_KINDS.join(' or ')}, got ${JSON.stringify(value)}`)
  return value as BlockstoreKind
}

export interface IdentityConfig {
  plcUrl: string
  handleResolverUrl?: string
  allowHttpLocalhost: boolean
  allowPrivateNetwork: boolean
}

/**
 * --plc / ATMIRROR_PLC, --handle-resolver / ATMIRROR_HANDLE_RESOLVER and
 * --allow-private-network / ATMIRROR_ALLOW_PRIVATE_NETWORK. A PLC
 * directory or handle resolver on http://localhost means a local test network, whose
 * PDS and did:web documents are plain http on localhost too: that is allowed then,
 * and only then.
 */
export function identityConfig (values: { plc?: string, 'handle-resolver'?: string, 'allow-private-network'?: boolean }, env: NodeJS.ProcessEnv): IdentityConfig {
  const plc = checkUrl('--plc', plcUrl(values.plc, env))
  const resolver = values['handle-resolver'] ?? env.ATMIRROR_HANDLE_RESOLVER
  const handleResolverUrl = resolver === undefined || resolver === '' ? undefined : checkUrl('--handle-resolver', resolver)
  const allowHttpLocalhost = [plc, handleResolverUrl].some(url => url !== undefined && isHttpLocalhost(url))
  // --allow-private-network / ATMIRROR_ALLOW_PRIVATE_NETWORK=1: outbound HTTP may reach private addresses
  const allowPrivateNetwork = values['allow-private-network'] === true || env.ATMIRROR_ALLOW_PRIVATE_NETWORK === '1'
  return { plcUrl: plc, handleResolverUrl, allowHttpLocalhost, allowPrivateNetwork }
}

function checkUrl (flag: string, value: string): string {
  let url: URL
  try {
    url = new URL(value)
  } catch {
    throw new UsageError(`${flag} must be a URL, got ${JSON.stringify(value)}`)
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new UsageError(`${flag} must be an http(s) URL, got ${JSON.stringify(value)}`)
  return value
}

function isHttpLocalhost (value: string): boolean {
  const url = new URL(value)
  return url.protocol === 'http:' && (url.hostname === 'localhost' || url.hostname === '127.0.0.1' || url.hostname === '[::1]')
}

/** Parses a non-negative integer flag. */
export function integerFlag (flag: string, value: string | undefined, fallback: number, range: { min?: number, max?: number } = {}): number {
  if (value === undefined) return fallback
  const n = Number(value)
  const min = range.min ?? 0
  const max = range.max ?? Number.MAX_SAFE_INTEGER
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < min || n > max) {
    throw new UsageError(`${flag} must be an integer from ${min} to ${max}, got ${JSON.stringify(value)}`)
  }
  return n
}

/**
 * Parses a size flag: bytes, or a number with K, M or G (binary: KiB, MiB, GiB;
 * `100M`, `100MB`, `100MiB` are the same).
 */
export function sizeFlag (flag: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback
  const match = /^(\d+)\s*(?:([kmg])(?:i?b)?|b)?$/i.exec(value.trim())
  const n = match === null ? NaN : Number(match[1]) * 1024 ** ({ k: 1, m: 2, g: 3 }[(match[2] ?? '').toLowerCase()] ?? 0)
  if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`${flag} must be a size in bytes, or with K, M or G (e.g. 100M), got ${JSON.stringify(value)}`)
  return n
}

/** Flags of blob mirroring, for the verbs that sync. */
export const blobOptions = {
  'no-blobs': { type: 'boolean' },
  'max-blob-size': { type: 'string' }
} as const satisfies NonNullable<ParseArgsConfig['options']>

/** One line about a sync: `did rev=… records=… (… fetched pds=… bitswap=… local=…, head from pds:…, 1.2 s)`. */
export function formatSync (result: SyncResult): string {
  const { fetched } = result
  const what = result.rollback !== undefined
    ? `unchanged: PDS rolled back to rev ${result.rollback.rev}, kept the stored rev`
    : !result.changed ? 'unchanged' : result.full ? 'full sync' : 'incremental sync'
  return `${result.did} rev=${result.rev} commit=${result.commit.toString()} records=${result.records} (${what}; fetched pds=${fetched.pds} bitswap=${fetched.bitswap} local=${fetched.local}, ${formatBytes(result.bytes)}${formatBlobs(result)}; head from ${result.source}; ${result.seconds.toFixed(1)} s)`
}

/** `512 B`, `1.5 KiB`, `3.2 MiB` (whole bytes: a rate is rarely whole). */
export function formatBytes (bytes: number): string {
  if (bytes < 1024) return `${Math.round(bytes)} B`
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`
}

/** `, blobs 3 (1.2 MiB), 1 failed, 1 refused` for a sync whose blob pass did something; '' otherwise. */
export function formatBlobs (result: SyncResult): string {
  const blobs = result.blobs
  if (blobs === undefined || blobs.wanted === 0) return ''
  const stored = blobs.fetched.pds + blobs.fetched.bitswap + blobs.fetched.local
  return `, blobs ${stored} (${formatBytes(blobs.bytes)})${blobs.failed > 0 ? `, ${blobs.failed} failed` : ''}${blobs.refused > 0 ? `, ${blobs.refused} refused` : ''}`
}
