import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseXml, soapBody, soapRequest, toXml } from '../../src/vsphere/lean-xml.ts';
import { arrayOf, moref, str, xsiType } from '../../src/vsphere/convert.ts';

test('lean XML gives node-soap\'s shapes: prefixes dropped, repeated children as arrays, attributes beside $value', () => {
  const xml = `<?xml version="1.0"?><!-- c --><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="x">
  <soapenv:Body><R xmlns="urn:vim25"><returnval>
    <token>t-1</token>
    <objects><obj type="VirtualMachine">vm-1</obj>
      <propSet><name>name</name><val xsi:type="xsd:string">a &amp; b &lt;c&gt; &#x2f;&#47;</val></propSet>
      <propSet><name>config.hardware.device</name><val xsi:type="ArrayOfVirtualDevice">
        <VirtualDevice xsi:type="VirtualDisk"><key>2000</key><unitNumber>0</unitNumber></VirtualDevice>
      </val></propSet>
      <propSet><name>empty</name><val xsi:type='ArrayOfOptionValue'/></propSet>
      <propSet><name>cdata</name><val><![CDATA[x<y]]></val></propSet>
    </objects>
    <objects><obj type="VirtualMachine">vm-2</obj></objects>
  </returnval></R></soapenv:Body></soapenv:Envelope>`;
  const rv = soapBody(xml)!.returnval;
  assert.equal(rv.token, 't-1');
  assert.equal(rv.objects.length, 2, 'repeated element: array');
  const [a, b] = rv.objects;
  assert.deepEqual(moref(a.obj), { type: 'VirtualMachine', value: 'vm-1' });
  assert.deepEqual(moref(b.obj), { type: 'VirtualMachine', value: 'vm-2' });
  assert.equal(a.propSet.length, 4);
  assert.equal(str(a.propSet[0].val), 'a & b <c> //');
  assert.equal(xsiType(a.propSet[0].val), 'string');
  const devs = arrayOf(a.propSet[1].val);
  assert.equal(devs.length, 1, 'a single child is the value itself; arrayOf/arr make it a list');
  assert.equal(xsiType(devs[0]), 'VirtualDisk');
  assert.equal(str(devs[0].key), '2000');
  assert.deepEqual(arrayOf(a.propSet[2].val), [], 'a self-closing empty array');
  assert.equal(a.propSet[3].val, 'x<y');
  assert.equal(a.propSet[0].val.attributes.xmlns, undefined, 'no xmlns in the attributes');
});

test('lean XML refuses malformed documents and DTDs', () => {
  assert.throws(() => parseXml('<a><b></a>'), /XML/);
  assert.throws(() => parseXml('<a>'), /XML/);
  assert.throws(() => parseXml('<a><b></c></a>'), /closes <b>/);
  assert.throws(() => parseXml('<!DOCTYPE a [<!ENTITY x "y">]><a/>'), /DTD/);
});

test('requests are written in the given element order, escaped, with attributes', () => {
  assert.equal(toXml('_this', { attributes: { type: 'PropertyCollector' }, $value: 'pc&1' }), '<_this type="PropertyCollector">pc&amp;1</_this>');
  assert.equal(toXml('x', { b: 1, a: ['p', 'q'], c: undefined }), '<x><b>1</b><a>p</a><a>q</a></x>');
  const env = soapRequest('ContinueRetrievePropertiesEx', { _this: { attributes: { type: 'PropertyCollector' }, $value: 'pc' }, token: '<t>' });
  assert.match(env, /<soapenv:Body><ContinueRetrievePropertiesEx xmlns="urn:vim25"><_this type="PropertyCollector">pc<\/_this><token>&lt;t&gt;<\/token><\/ContinueRetrievePropertiesEx><\/soapenv:Body>/);
  assert.equal(soapBody(env)!.token, '<t>', 'what is written reads back');
});

test('pruned elements are skipped whole, also when they nest an element of the same name', () => {
  const xml = '<r><d t="disk"><k>1</k></d><d t="nic"><d t="inner"><k>x</k></d><k>2</k></d><d t="pci"/><d t="disk"><k>3</k></d></r>';
  const r = parseXml(xml, { element: 'd', keep: (a) => a?.t === 'disk' }) as { r: { d: { k: string }[] } };
  assert.deepEqual(r.r.d.map((d) => d.k), ['1', '3']);
});
