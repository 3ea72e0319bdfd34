/**
 * Identity: DID and handle resolution (did:plc, did:web; DNS, HTTPS or a
 * resolveHandle service), the atproto view of a DID document, the DID → PeerID
 * bridge and the rendezvous key mirrors announce.
 */
export { AtprotoIdentityResolver, type AtprotoIdentityResolverInit, type Identity, type IdentityResolver, type ResolveIdentityOptions } from './resolver.ts'
export { parseAtprotoDocument, atprotoHandle, atprotoPds, atprotoSigningKey, claimsHandle, type AtprotoDocument, type DidDocument } from './did-document.ts'
export { getResolver, plcResolver, webResolver, webDocumentUrl, DEFAULT_PLC_URL, type DidResolversInit, type DidResolutionOptions } from './did-resolvers.ts'
export { normalizeHandle, resolveHandleDirect, resolveHandleDns, resolveHandleHttps, resolveHandleXrpc, type HandleLookupOptions } from './handle.ts'
export { peerIdForDid, peerIdForKey, libp2pPublicKey, libp2pPublicKeyProtobuf } from './peer-id.ts'
export { rendezvousCid, rendezvousPreimage, RENDEZVOUS_PREFIX } from './rendezvous.ts'
export { boundedFetch, DEFAULT_TIMEOUT_MS, type FetchLike, type BoundedFetchOptions } from './http.ts'
