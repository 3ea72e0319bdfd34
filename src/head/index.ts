/**
 * Heads: a repo's latest signed commit, verified, from the PDS or (through a
 * composite) from peers, plus the XRPC client the PDS brokers share.
 */
export { compareRevs, type Head, type HeadResolver, type ResolveHeadOptions } from './head-resolver.ts'
export { PdsHeadResolver, type PdsHeadResolverComponents, type PdsHeadResolverInit } from './pds-head-resolver.ts'
export { CompositeHeadResolver } from './composite-head-resolver.ts'
export { xrpcGet, xrpcUrl, readXrpcJson, readXrpcBytes, mapFetchError, xrpcErrorFromResponse, XRPC_JSON_MAX_BYTES, type XrpcRequestOptions } from '../http/xrpc.ts'
