/**
 * Identity: DID and handle resolution (did:plc, did:web; DNS, HTTPS or a
 * resolveHandle service), the atproto view of a DID document, the DID → PeerID
 * bridge and the rendezvous key mirrors announce.
 */
export { AtprotoIdentityResolver, DEFAULT_FAILURE_CACHE_TTL_MS, type AtprotoIdentityResolverInit, type Identity, type IdentityResolver, type ResolveIdentityOptions } from './resolver.ts'
export { parseAtprotoDocument, atprotoHandle, atprotoPds, atprotoSigningKey, type AtprotoDocument, type DidDocument, type ParseDocumentOptions } from './did-document.ts'
export { getResolver, plcResolver, webResolver, webDocumentUrl, isPlcDid, DEFAULT_PLC_URL, type DidResolversInit, type DidResolutionOptions } from './did-resolvers.ts'
export { normalizeHandle, resolveHandleDirect, resolveHandleDns, resolveHandleHttps, resolveHandleXrpc, type HandleLookupOptions } from './handle.ts'
export { peerIdForDid, peerIdForKey, peerIdMultihash, libp2pPublicKey, libp2pPublicKeyProtobuf, type AtprotoPeerId, type AtprotoLibp2pPublicKey, type EcdsaPeerId, type EcdsaP256PublicKey } from './peer-id.ts'
export { rendezvousCid, rendezvousPreimage, RENDEZVOUS_PREFIX } from './rendezvous.ts'
export { boundedFetch, DEFAULT_TIMEOUT_MS, BodyTooLargeError, isLoopbackHost, type FetchLike, type BoundedFetchOptions } from '../http/fetch.ts'
