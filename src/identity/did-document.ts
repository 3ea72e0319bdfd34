/**
 * What atproto reads from a DID document (atproto.com/specs/did, "DID Documents"):
 * the handle (the first valid `at://` entry of `alsoKnownAs`; the spec says any
 * other handle URIs are ignored), the signing key (the first valid `#atproto`
 * verification method whose `controller` is the DID itself, as the spec requires,
 * Multikey or legacy form, K-256 or P-256) and the PDS (the first `#atproto_pds`
 * service of type `AtprotoPersonalDataServer`, https; plain http only on a loopback
 * host when allowed). Method agnostic and pure: no network.
 */
import type { DIDDocument, Service, VerificationMethod } from 'did-resolver'
import { DidDocumentError } from '../errors.ts'
import { formatDidKey, parsePublicKeyMultibase, type PublicKey } from '../repo/keys.ts'
import { isValidHandle } from '../repo/syntax.ts'
import { isLoopbackHost } from '../http/fetch.ts'

export type { DIDDocument as DidDocument } from 'did-resolver'

/** The atproto view of a DID document. */
export interface AtprotoDocument {
  did: string
  /** The claimed handle, lowercased; not verified here. */
  handle?: string
  signingKey: PublicKey
  /** The signing key as `did:key:…`. */
  didKey: string
  /** The PDS origin, e.g. `https://pds.example.com` (no path, no trailing slash). */
  pds: string
}

const LEGACY_KEY_TYPES = new Set(['EcdsaSecp256k1VerificationKey2019', 'EcdsaSecp256r1VerificationKey2019'])

export interface ParseDocumentOptions {
  /**
   * Accept a plain-http `#atproto_pds` endpoint when its host is `localhost` or a
   * loopback IP (a local test network). Any other http endpoint is always refused.
   * @default false
   */
  allowHttpLocalhost?: boolean
}

/**
 * Reads the handle, signing key and PDS from `document`. Throws
 * {@link DidDocumentError} naming the DID and what is missing or malformed.
 */
export function parseAtprotoDocument (did: string, document: unknown, options: ParseDocumentOptions = {}): AtprotoDocument {
  if (typeof document !== 'object' || document === null || Array.isArray(document)) {
    throw new DidDocumentError(did, 'not a JSON object')
  }
  const doc = document as DIDDocument
  if (doc.id !== did) throw new DidDocumentError(did, `id ${JSON.stringify(doc.id)} does not match the DID`)
  const signingKey = atprotoSigningKey(did, doc)
  return {
    did,
    handle: atprotoHandle(doc),
    signingKey,
    didKey: formatDidKey(signingKey),
    pds: atprotoPds(did, doc, options)
  }
}

/**
 * The primary handle: the first valid handle URI in `alsoKnownAs` (lowercased), or
 * undefined. Later `at://` entries are not handles of the DID (the spec says to
 * ignore them), so a handle → DID lookup verifies only against this one.
 */
export function atprotoHandle (doc: Pick<DIDDocument, 'alsoKnownAs'>): string | undefined {
  if (!Array.isArray(doc.alsoKnownAs)) return undefined
  for (const aka of doc.alsoKnownAs) {
    if (typeof aka !== 'string' || !aka.startsWith('at://')) continue
    const handle = aka.slice('at://'.length).toLowerCase()
    if (isValidHandle(handle)) return handle
  }
  return undefined
}

/**
 * The first valid `#atproto` key: id `#atproto` or `<did>#atproto`, controller the
 * DID (the spec: "in the current version of atproto must match the account DID
 * itself"), type `Multikey` (multicodec-prefixed compressed key) or a legacy
 * `EcdsaSecp256{k,r}1VerificationKey2019` (raw key bytes).
 */
export function atprotoSigningKey (did: string, doc: Pick<DIDDocument, 'verificationMethod'>): PublicKey {
  const methods = doc.verificationMethod
  if (methods !== undefined && !Array.isArray(methods)) throw new DidDocumentError(did, 'verificationMethod is not an array')
  let reason = 'no #atproto verification method'
  for (const method of methods ?? []) {
    if (!isFragment(did, (method as VerificationMethod)?.id, 'atproto')) continue
    const { type, controller, publicKeyMultibase } = method
    if (controller !== did) {
      reason = `#atproto controller ${JSON.stringify(controller)} is not the DID`
      continue
    }
    if (typeof publicKeyMultibase !== 'string') {
      reason = '#atproto has no publicKeyMultibase'
      continue
    }
    try {
      if (type === 'Multikey') return parsePublicKeyMultibase(publicKeyMultibase)
      if (LEGACY_KEY_TYPES.has(type)) return parsePublicKeyMultibase(publicKeyMultibase, type as 'EcdsaSecp256k1VerificationKey2019' | 'EcdsaSecp256r1VerificationKey2019')
      reason = `#atproto has unsupported type ${JSON.stringify(type)}`
    } catch (err) {
      reason = `#atproto key is malformed (${(err as Error).message})`
    }
  }
  throw new DidDocumentError(did, reason)
}

/**
 * The origin of the first `#atproto_pds` service of type
 * `AtprotoPersonalDataServer`: an https URL with only scheme, host and port; plain
 * http only for a loopback host and only with `allowHttpLocalhost`.
 */
export function atprotoPds (did: string, doc: Pick<DIDDocument, 'service'>, options: ParseDocumentOptions = {}): string {
  const services = doc.service
  if (services !== undefined && !Array.isArray(services)) throw new DidDocumentError(did, 'service is not an array')
  const service = (services ?? []).find(s => isFragment(did, (s as Service)?.id, 'atproto_pds') && s.type === 'AtprotoPersonalDataServer')
  if (service === undefined) throw new DidDocumentError(did, 'no #atproto_pds service of type AtprotoPersonalDataServer')
  const endpoint = service.serviceEndpoint
  if (typeof endpoint !== 'string') throw new DidDocumentError(did, '#atproto_pds serviceEndpoint is not a string')
  let url: URL
  try {
    url = new URL(endpoint)
  } catch {
    throw new DidDocumentError(did, `#atproto_pds serviceEndpoint ${JSON.stringify(endpoint)} is not a URL`)
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new DidDocumentError(did, `#atproto_pds serviceEndpoint ${JSON.stringify(endpoint)} is not http(s)`, { url: endpoint })
  if (url.username !== '' || url.password !== '' || url.pathname !== '/' || url.search !== '' || url.hash !== '') {
    throw new DidDocumentError(did, `#atproto_pds serviceEndpoint ${JSON.stringify(endpoint)} must be only scheme, host and port`, { url: endpoint })
  }
  if (url.protocol === 'http:') {
    if (!isLoopbackHost(url.hostname)) {
      throw new DidDocumentError(did, '#atproto_pds serviceEndpoint is plain http on a non-loopback host (https is required)', { url: url.origin })
    }
    if (options.allowHttpLocalhost !== true) {
      throw new DidDocumentError(did, '#atproto_pds serviceEndpoint is plain http on localhost, allowed only on a local test network (allowHttpLocalhost)', { url: url.origin })
    }
  }
  return url.origin
}

function isFragment (did: string, id: unknown, fragment: string): boolean {
  return id === `#${fragment}` || id === `${did}#${fragment}`
}
