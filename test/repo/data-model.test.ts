import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, it } from 'node:test'
import { decodeCbor, encodeCbor } from '../../src/repo/cbor.ts'
import { cidForBytes, RAW } from '../../src/repo/cid.ts'
import { assertDataModel, dataModelToJson, isValidDataModel, jsonToDataModel } from '../../src/repo/data-model.ts'

const DATA_MODEL = join(import.meta.dirname, '../vectors/atproto-interop-tests/data-model')
const readJson = <T>(name: string): T => JSON.parse(readFileSync(join(DATA_MODEL, name), 'utf8')) as T

describe('data-model fixtures (interop vectors): JSON → DRISL → CID', () => {
  const fixtures = readJson<Array<{ json: unknown, cbor_base64: string, cid: string }>>('data-model-fixtures.json')
  fixtures.forEach((fixture, i) => {
    it(`fixture ${i}: ${fixture.cid}`, () => {
      const value = jsonToDataModel(fixture.json)
      const bytes = encodeCbor(value)
      assert.equal(Buffer.from(bytes).toString('base64').replace(/=+$/, ''), fixture.cbor_base64)
      assert.equal(cidForBytes(bytes).toString(), fixture.cid)
      // And back: the DRISL bytes decode (strictly) to the same JSON.
      const decoded = decodeCbor(Buffer.from(fixture.cbor_base64, 'base64'))
      assertDataModel(decoded)
      assert.deepEqual(dataModelToJson(decoded), fixture.json)
    })
  })
})

describe('data-model-valid (interop vectors)', () => {
  for (const { note, json } of readJson<Array<{ note: string, json: unknown }>>('data-model-valid.json')) {
    it(note, () => {
      const value = jsonToDataModel(json)
      assert.ok(isValidDataModel(decodeCbor(encodeCbor(value))))
    })
  }
})

describe('data-model-invalid (interop vectors)', () => {
  for (const { note, json } of readJson<Array<{ note: string, json: unknown }>>('data-model-invalid.json')) {
    it(note, () => {
      assert.throws(() => jsonToDataModel(json), { name: 'InvalidDataModelError' })
    })
  }
})

describe('data model rules', () => {
  const blobRef = cidForBytes(new Uint8Array([1]), RAW)
  const blob = { $type: 'blob', ref: blobRef, mimeType: 'image/png', size: 10 }

  it('names the path of the offending value', () => {
    assert.throws(() => jsonToDataModel({ a: [{ b: 1.5 }] }), (err: Error & { path?: string }) => {
      assert.equal(err.name, 'InvalidDataModelError')
      assert.equal(err.path, 'a.0.b')
      return true
    })
  })

  it('converts $bytes with or without padding, and writes it without', () => {
    const padded = jsonToDataModel({ b: { $bytes: 'AQI=' } })
    const unpadded = jsonToDataModel({ b: { $bytes: 'AQI' } })
    assert.deepEqual(padded, { b: new Uint8Array([1, 2]) })
    assert.deepEqual(unpadded, padded)
    assert.deepEqual(dataModelToJson(padded), { b: { $bytes: 'AQI' } })
  })

  const invalidJson: Array<[string, unknown]> = [
    ['url-safe base64 in $bytes', { b: { $bytes: 'a-_b' } }],
    ['base64 with a stray character', { b: { $bytes: 'AQ I' } }],
    ['base64 of impossible length', { b: { $bytes: 'AQIDB' } }],
    ['base64 with non-zero trailing bits', { b: { $bytes: 'AQJ' } }],
    ['an empty $link', { l: { $link: '' } }],
    ['a top-level array', [{ a: 1 }]],
    ['a top-level $link object', { $link: blobRef.toString() }],
    ['an integer beyond 2^53', { n: 2 ** 60 }],
    ['a blob with a dag-cbor ref', { b: { ...blob, ref: { $link: cidForBytes(new Uint8Array([1])).toString() } } }],
    ['a blob with a negative size', { b: { ...blob, ref: { $link: blobRef.toString() }, size: -1 } }],
    ['a blob with a float size', { b: { ...blob, ref: { $link: blobRef.toString() }, size: 1.5 } }],
    ['a blob with an empty mimeType', { b: { ...blob, ref: { $link: blobRef.toString() }, mimeType: '' } }],
    ['a blob with an extra field', { b: { ...blob, ref: { $link: blobRef.toString() }, extra: true } }],
    ['a blob whose ref is a string', { b: { ...blob, ref: blobRef.toString() } }]
  ]
  for (const [name, json] of invalidJson) {
    it(`rejects ${name}`, () => {
      assert.throws(() => jsonToDataModel(json), { name: 'InvalidDataModelError' })
    })
  }

  it('accepts a well-formed blob and a legacy blob object', () => {
    const value = jsonToDataModel({ b: { ...blob, ref: { $link: blobRef.toString() } }, legacy: { cid: blobRef.toString(), mimeType: 'image/png' } })
    assertDataModel(value)
    assert.ok((value.b as { ref: typeof blobRef }).ref.equals(blobRef))
  })

  const invalidDecoded: Array<[string, unknown]> = [
    ['a float', { a: 0.5 }],
    ['$type null', { $type: null }],
    ['an empty $type', { x: { $type: '' } }],
    ['a blob without size', { b: { $type: 'blob', ref: blobRef, mimeType: 'image/png' } }],
    ['an integer beyond 64 bits', { n: 2n ** 64n }],
    ['a Date', { d: new Date(0) }],
    ['a Map', { m: new Map() }],
    ['undefined', { u: undefined }],
    ['a top-level string', 'text']
  ]
  for (const [name, value] of invalidDecoded) {
    it(`assertDataModel rejects ${name}`, () => {
      assert.throws(() => assertDataModel(value), { name: 'InvalidDataModelError' })
      assert.equal(isValidDataModel(value), false)
    })
  }

  it('dataModelToJson refuses integers JSON cannot hold exactly', () => {
    assert.throws(() => dataModelToJson({ n: 2n ** 60n }), { name: 'InvalidDataModelError' })
    assert.deepEqual(dataModelToJson({ n: 5n }), { n: 5 })
  })
})
