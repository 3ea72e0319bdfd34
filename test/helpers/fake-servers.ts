/**
 * Hand-made servers on 127.0.0.1 for what a real PDS or PLC directory never does
 * (a DID document without `#atproto`, a commit signed by the wrong key, a server
 * that never answers, HTML, no getLatestCommit), and the bytes they serve.
 *
 * Commits, CARs and keys are built here with @ipld/dag-cbor and @noble/curves
 * directly, not with atmirror's own code: the inputs of a test must not come from
 * the engine under test.
 */
import { createHash } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import * as dagCbor from '@ipld/dag-cbor'
import { p256 } from '@noble/curves/nist.js'
import { secp256k1 } from '@noble/curves/secp256k1.js'
import { CID, varint } from 'multiformats'
import { base58btc } from 'multiformats/bases/base58'
import * as Digest from 'multiformats/hashes/digest'

export interface TestKey {
  type: 'k256' | 'p256'
  secret: Uint8Array
  didKey: string
  /** Multikey `publicKeyMultibase`. */
  multibase: string
}

/** A deterministic key from a seed string. */
export function testKey (seed: string, type: 'k256' | 'p256' = 'k256'): TestKey {
  const curve = type === 'k256' ? secp256k1 : p256
  const secret = curve.utils.randomSecretKey(createHash('sha512').update(seed).digest().subarray(0, curve.lengths.seed))
  const compressed = curve.getPublicKey(secret, true)
  const prefix = type === 'k256' ? [0xe7, 0x01] : [0x80, 0x24]
  const multibase = base58btc.encode(Uint8Array.from([...prefix, ...compressed]))
  return { type, secret, didKey: `did:key:${multibase}`, multibase }
}

/** A did:plc-shaped DID from a seed. */
export function testDid (seed: string): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz234567'
  const digest = createHash('sha256').update(seed).digest()
  return 'did:plc:' + Array.from(digest.subarray(0, 24), b => alphabet[b % 32]).join('')
}

export function didDocument (did: string, key: TestKey | undefined, pds: string, handle?: string): Record<string, unknown> {
  return {
    '@context': ['https://www.w3.org/ns/did/v1', 'https://w3id.org/security/multikey/v1'],
    id: did,
    alsoKnownAs: handle === undefined ? [] : [`at://${handle}`],
    verificationMethod: key === undefined ? [] : [{ id: `${did}#atproto`, type: 'Multikey', controller: did, publicKeyMultibase: key.multibase }],
    service: [{ id: '#atproto_pds', type: 'AtprotoPersonalDataServer', serviceEndpoint: pds }]
  }
}

function cidOf (bytes: Uint8Array): CID {
  return CID.createV1(0x71, Digest.create(0x12, createHash('sha256').update(bytes).digest()))
}

export interface TestCommit {
  cid: CID
  bytes: Uint8Array
  rev: string
  data: CID
}

/** A signed v3 commit block. */
export function signedCommit (did: string, key: TestKey, rev = '3l3qo2vutsw2b'): TestCommit {
  const data = cidOf(dagCbor.encode({ e: [], l: null }))
  const unsigned = { did, version: 3, data, rev, prev: null }
  const curve = key.type === 'k256' ? secp256k1 : p256
  const sig = curve.sign(dagCbor.encode(unsigned), key.secret, { prehash: true, lowS: true })
  const bytes = dagCbor.encode({ ...unsigned, sig })
  return { cid: cidOf(bytes), bytes, rev, data }
}

/** A CAR v1 with no roots (as getBlocks writes) holding `blocks`. */
export function carOf (blocks: Array<{ cid: CID, bytes: Uint8Array }>): Uint8Array {
  const header = dagCbor.encode({ version: 1, roots: [] })
  const parts: Uint8Array[] = [varint.encodeTo(header.length, new Uint8Array(varint.encodingLength(header.length))), header]
  for (const { cid, bytes } of blocks) {
    const length = cid.bytes.length + bytes.length
    parts.push(varint.encodeTo(length, new Uint8Array(varint.encodingLength(length))), cid.bytes, bytes)
  }
  return Buffer.concat(parts)
}

export interface TestServer {
  url: string
  /** `http://localhost:PORT` (what DID documents name). */
  localhostUrl: string
  port: number
  /** Every request path + query, in order. */
  requests: string[]
  close: () => Promise<void>
}

export type Handler = (req: IncomingMessage, res: ServerResponse, url: URL) => void | Promise<void>

/** An HTTP server on 127.0.0.1 that records requests and runs `handler`. */
export async function startServer (handler: Handler): Promise<TestServer> {
  const requests: string[] = []
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1')
    requests.push(url.pathname + url.search)
    Promise.resolve(handler(req, res, url)).catch(err => {
      res.statusCode = 500
      res.end(String(err))
    })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    localhostUrl: `http://localhost:${port}`,
    port,
    requests,
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>(resolve => server.close(() => { resolve() }))
    }
  }
}

export function json (res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8' })
  res.end(JSON.stringify(body))
}

export function car (res: ServerResponse, bytes: Uint8Array): void {
  res.writeHead(200, { 'content-type': 'application/vnd.ipld.car' })
  res.end(bytes)
}

/** A PLC directory serving `docs` by DID (404 for others). */
export async function startPlc (docs: Map<string, unknown>): Promise<TestServer> {
  return await startServer((_req, res, url) => {
    const doc = docs.get(decodeURIComponent(url.pathname.slice(1)))
    if (doc === undefined) json(res, 404, { message: 'DID not registered' })
    else json(res, 200, doc)
  })
}
