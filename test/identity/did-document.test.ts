import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { atprotoHandle, parseAtprotoDocument, type ParseDocumentOptions } from '../../src/identity/did-document.ts'

const DID = 'did:plc:ewvi7nxzyoun6zhxrhs64oiz'
// K-256 key from atproto-interop-tests crypto/w3c_didkey_K256.json, in both DID-document forms.
const K256_DID_KEY = 'did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme'
const K256_MULTIKEY = 'zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme'
// The example pair of atproto.com/specs/did: one K-256 key, legacy (uncompressed, no multicodec) and Multikey.
const SPEC_LEGACY = 'zQYEBzXeuTM9UR3rfvNag6L3RNAs5pQZyYPsomTsgQhsxLdEgCrPTLgFna8yqCnxPpNT7DBk6Ym3dgPKNu86vt9GR'
const SPEC_DID_KEY = 'did:key:zQ3shXjHeiBuRCKmM36cuYnm7YEMzhGnCmCyW92sRJ9pribSF'
// P-256 key from atproto-interop-tests crypto/signature-fixtures.json (legacy form: compressed raw bytes).
const P256_DID_KEY = 'did:key:zDnaembgSGUhZULN2Caob4HLJPaxBh92N7rtH21TErzqf8HQo'
const P256_LEGACY = 'zxdM8dSstjrpZaRUwBmDvjGXweKuEMVN95A9oJBFjkWMh'

// 02 || 00…05: x = 5 is not on secp256k1.
const NOT_ON_K256 = 'zbTdjzaWCb6UY9AZqTMMbPSc3VzHeVR9By6ueiqrY2uVe'

function doc (overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    '@context': ['https://www.w3.org/ns/did/v1', 'https://w3id.org/security/multikey/v1'],
    id: DID,
    alsoKnownAs: ['at://alice.example.test'],
    verificationMethod: [{ id: `${DID}#atproto`, type: 'Multikey', controller: DID, publicKeyMultibase: K256_MULTIKEY }],
    service: [{ id: '#atproto_pds', type: 'AtprotoPersonalDataServer', serviceEndpoint: 'https://pds.example.test' }],
    ...overrides
  }
}

function assertDocError (document: unknown, pattern: RegExp, options: ParseDocumentOptions & { url?: string } = {}): void {
  assert.throws(() => parseAtprotoDocument(DID, document, options), (err: Error & { did?: string, url?: string }) => {
    assert.equal(err.name, 'DidDocumentError')
    assert.match(err.message, pattern)
    assert.match(err.message, new RegExp(`did=${DID}`))
    assert.equal(err.did, DID)
    if (options.url !== undefined) {
      assert.equal(err.url, options.url)
      assert.ok(err.message.includes(`url=${options.url}`), err.message)
    }
    return true
  })
}

function pdsDoc (serviceEndpoint: string): Record<string, unknown> {
  return doc({ service: [{ id: '#atproto_pds', type: 'AtprotoPersonalDataServer', serviceEndpoint }] })
}

describe('parseAtprotoDocument', () => {
  it('Multikey with an absolute #atproto id', () => {
    const parsed = parseAtprotoDocument(DID, doc())
    assert.equal(parsed.did, DID)
    assert.equal(parsed.handle, 'alice.example.test')
    assert.equal(parsed.signingKey.type, 'k256')
    assert.equal(parsed.didKey, K256_DID_KEY)
    assert.equal(parsed.pds, 'https://pds.example.test')
  })

  it('legacy k256 key with a relative #atproto id (uncompressed, as the PLC server writes it)', () => {
    const parsed = parseAtprotoDocument(DID, doc({
      verificationMethod: [{ id: '#atproto', type: 'EcdsaSecp256k1VerificationKey2019', controller: DID, publicKeyMultibase: SPEC_LEGACY }]
    }))
    assert.equal(parsed.didKey, SPEC_DID_KEY)
  })

  it('legacy p256 key (EcdsaSecp256r1VerificationKey2019)', () => {
    const parsed = parseAtprotoDocument(DID, doc({
      verificationMethod: [{ id: '#atproto', type: 'EcdsaSecp256r1VerificationKey2019', controller: DID, publicKeyMultibase: P256_LEGACY }]
    }))
    assert.equal(parsed.signingKey.type, 'p256')
    assert.equal(parsed.didKey, P256_DID_KEY)
  })

  it('Multikey p256 key', () => {
    const parsed = parseAtprotoDocument(DID, doc({
      verificationMethod: [{ id: '#atproto', type: 'Multikey', controller: DID, publicKeyMultibase: P256_DID_KEY.slice('did:key:'.length) }]
    }))
    assert.equal(parsed.didKey, P256_DID_KEY)
  })

  it('skips other verification methods and invalid #atproto entries, using the first valid one', () => {
    const parsed = parseAtprotoDocument(DID, doc({
      verificationMethod: [
        { id: '#other', type: 'Multikey', controller: DID, publicKeyMultibase: P256_DID_KEY.slice(8) },
        { id: '#atproto', type: 'Multikey', controller: 'did:plc:someoneelse', publicKeyMultibase: P256_DID_KEY.slice(8) },
        { id: '#atproto', type: 'Multikey', controller: DID, publicKeyMultibase: K256_MULTIKEY },
        { id: '#atproto', type: 'Multikey', controller: DID, publicKeyMultibase: P256_DID_KEY.slice(8) }
      ]
    }))
    assert.equal(parsed.didKey, K256_DID_KEY)
  })

  it('accepts an absolute #atproto_pds id and keeps only the origin of a trailing-slash URL', () => {
    const parsed = parseAtprotoDocument(DID, doc({
      service: [{ id: `${DID}#atproto_pds`, type: 'AtprotoPersonalDataServer', serviceEndpoint: 'https://pds.example.test:8443/' }]
    }))
    assert.equal(parsed.pds, 'https://pds.example.test:8443')
  })

  it('accepts a plain http PDS on localhost or a loopback IP when allowHttpLocalhost is set (local test network)', () => {
    for (const endpoint of ['http://localhost:2583', 'http://127.0.0.1:2583', 'http://127.5.6.7', 'http://[::1]:2583']) {
      assert.equal(parseAtprotoDocument(DID, pdsDoc(endpoint), { allowHttpLocalhost: true }).pds, endpoint)
    }
  })

  it('refuses a plain http PDS on localhost unless allowHttpLocalhost is set, naming the URL', () => {
    assertDocError(pdsDoc('http://localhost:2583'), /plain http on localhost, allowed only on a local test network/, { url: 'http://localhost:2583' })
    assertDocError(pdsDoc('http://127.0.0.1:2583/'), /plain http on localhost/, { allowHttpLocalhost: false, url: 'http://127.0.0.1:2583' })
  })

  it('refuses a plain http PDS on any other host, even with allowHttpLocalhost', () => {
    for (const endpoint of ['http://pds.example.test', 'http://127.0.0.1.example.test:2583', 'http://localhost.example.test', 'http://[::2]']) {
      assertDocError(pdsDoc(endpoint), /plain http on a non-loopback host \(https is required\)/, { allowHttpLocalhost: true, url: new URL(endpoint).origin })
      assertDocError(pdsDoc(endpoint), /plain http on a non-loopback host/, { url: new URL(endpoint).origin })
    }
  })

  it('an https PDS on localhost needs no switch', () => {
    assert.equal(parseAtprotoDocument(DID, pdsDoc('https://localhost:2583')).pds, 'https://localhost:2583')
  })

  it('no handle when alsoKnownAs is missing', () => {
    assert.equal(parseAtprotoDocument(DID, doc({ alsoKnownAs: undefined })).handle, undefined)
  })

  it('rejects a document that is not an object', () => {
    assertDocError('nope', /not a JSON object/)
    assertDocError(null, /not a JSON object/)
    assertDocError([doc()], /not a JSON object/)
  })

  it('rejects a document for another DID', () => {
    assertDocError(doc({ id: 'did:plc:aaaaaaaaaaaaaaaaaaaaaaaa' }), /does not match the DID/)
  })

  it('rejects a document without #atproto', () => {
    assertDocError(doc({ verificationMethod: [] }), /no #atproto verification method/)
    assertDocError(doc({ verificationMethod: undefined }), /no #atproto verification method/)
  })

  // atproto.com/specs/did: the controller "in the current version of atproto must
  // match the account DID itself" (the reference @atproto/common-web does not check it).
  it('rejects #atproto controlled by another DID', () => {
    assertDocError(doc({ verificationMethod: [{ id: '#atproto', type: 'Multikey', controller: 'did:web:example.test', publicKeyMultibase: K256_MULTIKEY }] }), /controller/)
  })

  it('rejects an unsupported #atproto type', () => {
    assertDocError(doc({ verificationMethod: [{ id: '#atproto', type: 'Ed25519VerificationKey2020', controller: DID, publicKeyMultibase: K256_MULTIKEY }] }), /unsupported type/)
  })

  it('rejects a malformed #atproto key', () => {
    assertDocError(doc({ verificationMethod: [{ id: '#atproto', type: 'Multikey', controller: DID, publicKeyMultibase: 'zNotAKey' }] }), /malformed/)
    assertDocError(doc({ verificationMethod: [{ id: '#atproto', type: 'Multikey', controller: DID }] }), /no publicKeyMultibase/)
  })

  it('rejects a legacy key whose bytes are not on the named curve', () => {
    assertDocError(doc({ verificationMethod: [{ id: '#atproto', type: 'EcdsaSecp256k1VerificationKey2019', controller: DID, publicKeyMultibase: NOT_ON_K256 }] }), /malformed/)
  })

  it('rejects verificationMethod that is not an array', () => {
    assertDocError(doc({ verificationMethod: { id: '#atproto' } }), /verificationMethod is not an array/)
  })

  it('rejects a document without #atproto_pds', () => {
    assertDocError(doc({ service: [] }), /no #atproto_pds/)
    assertDocError(doc({ service: [{ id: '#atproto_pds', type: 'SomethingElse', serviceEndpoint: 'https://pds.example.test' }] }), /no #atproto_pds/)
  })

  it('rejects a #atproto_pds endpoint that is not a string', () => {
    assertDocError(doc({ service: [{ id: '#atproto_pds', type: 'AtprotoPersonalDataServer', serviceEndpoint: { uri: 'https://pds.example.test' } }] }), /not a string/)
  })

  it('rejects a #atproto_pds endpoint that is not a URL', () => {
    assertDocError(doc({ service: [{ id: '#atproto_pds', type: 'AtprotoPersonalDataServer', serviceEndpoint: 'pds.example.test' }] }), /not a URL/)
  })

  it('rejects a #atproto_pds endpoint that is not http(s)', () => {
    assertDocError(doc({ service: [{ id: '#atproto_pds', type: 'AtprotoPersonalDataServer', serviceEndpoint: 'ftp://pds.example.test' }] }), /not http\(s\)/)
  })

  it('rejects a #atproto_pds endpoint with a path, query or credentials', () => {
    // credentials set through URL (the endpoint is only parsed, never contacted)
    const withCredentials = Object.assign(new URL('https://pds.example.test'), { username: 'alice', password: 'pw' }).href
    for (const endpoint of ['https://pds.example.test/prefix', 'https://pds.example.test/?x=1', withCredentials]) {
      assertDocError(doc({ service: [{ id: '#atproto_pds', type: 'AtprotoPersonalDataServer', serviceEndpoint: endpoint }] }), /only scheme, host and port/)
    }
  })
})

describe('handles in alsoKnownAs', () => {
  it('the primary handle is the first valid at:// entry, lowercased', () => {
    assert.equal(atprotoHandle({ alsoKnownAs: ['https://example.test', 'at://not a handle', 'at://Alice.Example.TEST', 'at://bob.example.test'] }), 'alice.example.test')
  })

  it('no handle without a valid at:// entry', () => {
    assert.equal(atprotoHandle({ alsoKnownAs: ['https://alice.example.test', 'at://-bad-.com'] }), undefined)
    assert.equal(atprotoHandle({}), undefined)
  })

  it('later at:// entries are not handles of the DID (the spec: ignore them)', () => {
    const parsed = parseAtprotoDocument(DID, doc({ alsoKnownAs: ['at://alice.example.test', 'at://victim.example.test'] }))
    assert.equal(parsed.handle, 'alice.example.test')
  })
})
