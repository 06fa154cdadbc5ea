/** The vim25 methods vmlift calls, typed, over a VimSession. */
import type { VimSession } from './session.ts';
import { arr, bool, mor, morOf, moref, num, str, xsiType, type MoRef } from './convert.ts';
import { soapBody, type Prune } from './lean-xml.ts';
import { badResponse } from './errors.ts';

export interface PropSpec { type: string; pathSet: string[] }
/** A property vCenter did not return (`missingSet`): its path, the fault's type and, for NoPermission, the privilege. */
export interface MissingProperty { path: string; fault: string; privilege?: string }
export interface ObjectProps { obj: MoRef; props: Record<string, any>; missing: MissingProperty[] }

function missingProperty(m: any): MissingProperty {
  const f = m?.fault?.fault;
  const out: MissingProperty = { path: str(m?.path) ?? '', fault: xsiType(f) ?? 'unknown fault' };
  const privilege = str(f?.privilegeId);
  if (privilege) out.privilege = privilege;
  return out;
}

/** The token of a RetrieveResult: it comes before the objects (the schema's order), so it is read before the page is parsed. */
function tokenOf(xml: string): string | undefined {
  const head = xml.slice(0, Math.max(0, xml.indexOf('<objects')) || xml.length);
  const m = /<(?:[\w-]+:)?token>([^<]*)<\/(?:[\w-]+:)?token>/.exec(head);
  return m ? m[1] : undefined;
}

function objectsOf(s: VimSession, xml: string, out: ObjectProps[], prune?: Prune): string | undefined {
  let body;
  try {
    body = soapBody(xml, prune);
  } catch (e) {
    throw badResponse(new URL(s.url).host, `RetrievePropertiesEx: ${(e as Error).message}`, e);
  }
  const rv = body?.returnval;
  if (!rv || typeof rv !== 'object') return undefined;
  for (const o of arr(rv.objects)) {
    const props: Record<string, any> = {};
    for (const p of arr(o.propSet)) props[str(p.name)!] = p.val;
    out.push({ obj: moref(o.obj)!, props, missing: arr(o.missingSet).map(missingProperty) });
  }
  return str(rv.token) || undefined;
}

/**
 * RetrievePropertiesEx + ContinueRetrievePropertiesEx until the token runs out. vCenter may page
 * even without maxObjects. The answers go through lean-xml.ts, not node-soap (docs/vsphere.md,
 * Measured), and the next page is asked for before the current one is parsed.
 */
export interface RetrieveOptions {
  maxObjects?: number;
  /** Parts of the answer the caller does not read, skipped unparsed (e.g. devices other than disks and their controllers). */
  prune?: Prune;
}

export async function retrieveProperties(s: VimSession, specSet: Record<string, unknown>[], o: number | RetrieveOptions = {}): Promise<ObjectProps[]> {
  const out = await retrieveAll(s, specSet, o);
  if (!out.some((x) => x.missing.some((m) => m.fault === 'NotAuthenticated'))) return out;
  // An ended session may answer with NotAuthenticated per property (missingSet) instead of a fault
  // of the call: that logs in again and retrieves once more, as a NotAuthenticated fault does.
  s.log.info({ method: 'RetrievePropertiesEx' }, 'session ended (NotAuthenticated in missingSet); logging in again');
  await s.relogin();
  return retrieveAll(s, specSet, o);
}

async function retrieveAll(s: VimSession, specSet: Record<string, unknown>[], o: number | RetrieveOptions): Promise<ObjectProps[]> {
  const { maxObjects, prune } = typeof o === 'number' ? { maxObjects: o, prune: undefined } : o;
  const pc = morOf(s.content.propertyCollector);
  const out: ObjectProps[] = [];
  let page: Promise<string> | undefined = s.callText('RetrievePropertiesEx', { _this: pc, specSet, options: maxObjects ? { maxObjects } : {} });
  const seen = new Set<string>();
  while (page) {
    const xml = await page;
    const early = tokenOf(xml);
    page = early ? s.callText('ContinueRetrievePropertiesEx', { _this: pc, token: early }) : undefined;
    // A page that fails to parse must not leave the next request unobserved.
    if (page) page.catch(() => {});
    const token = objectsOf(s, xml, out, prune);
    if (token && !early) page = s.callText('ContinueRetrievePropertiesEx', { _this: pc, token });
    if (token) {
      if (seen.has(token)) throw new Error(`vCenter answered the same PropertyCollector token twice (${token})`);
      seen.add(token);
    }
  }
  return out;
}

/** A filter spec over a ContainerView: every object of the given types, with their properties. */
export function viewSpec(view: MoRef, props: PropSpec[]): Record<string, unknown> {
  return {
    propSet: props.map((p) => ({ type: p.type, pathSet: p.pathSet })),
    objectSet: [{ obj: morOf(view), skip: true, selectSet: [{ attributes: { 'xsi:type': 'vim25:TraversalSpec' }, name: 'view', type: 'ContainerView', path: 'view', skip: false }] }],
  };
}

/** A filter spec over explicit objects. */
export function objectsSpec(objs: MoRef[], props: PropSpec[]): Record<string, unknown> {
  return { propSet: props.map((p) => ({ type: p.type, pathSet: p.pathSet })), objectSet: objs.map((o) => ({ obj: morOf(o) })) };
}

export async function createContainerView(s: VimSession, types: string[]): Promise<MoRef> {
  const r = await s.call('CreateContainerView', { _this: morOf(s.content.viewManager), container: morOf(s.content.rootFolder), type: types, recursive: true });
  return moref(r.returnval)!;
}

export async function destroyView(s: VimSession, view: MoRef): Promise<void> {
  await s.call('DestroyView', { _this: morOf(view) });
}

export interface ConfigSpec { extraConfig?: { key: string; value: string }[]; changeTrackingEnabled?: boolean }

export async function reconfigVM(s: VimSession, vm: MoRef, spec: ConfigSpec): Promise<MoRef> {
  const body: Record<string, unknown> = {};
  if (spec.extraConfig?.length) {
    body.extraConfig = spec.extraConfig.map((o) => ({ key: o.key, value: { attributes: { 'xmlns:xsd': 'http://www.w3.org/2001/XMLSchema', 'xsi:type': 'xsd:string' }, $value: o.value } }));
  }
  if (spec.changeTrackingEnabled !== undefined) body.changeTrackingEnabled = spec.changeTrackingEnabled;
  const r = await s.call('ReconfigVM_Task', { _this: morOf(vm), spec: body });
  return moref(r.returnval)!;
}

export async function createSnapshotTask(s: VimSession, vm: MoRef, name: string, o: { description?: string; memory: boolean; quiesce: boolean }): Promise<MoRef> {
  const args: Record<string, unknown> = { _this: morOf(vm), name };
  if (o.description) args.description = o.description;
  args.memory = o.memory;
  args.quiesce = o.quiesce;
  const r = await s.call('CreateSnapshot_Task', args);
  return moref(r.returnval)!;
}

export async function removeSnapshotTask(s: VimSession, snapshot: MoRef, o: { removeChildren: boolean; consolidate: boolean }): Promise<MoRef> {
  const r = await s.call('RemoveSnapshot_Task', { _this: morOf(snapshot), removeChildren: o.removeChildren, consolidate: o.consolidate });
  return moref(r.returnval)!;
}

export async function consolidateVMDisksTask(s: VimSession, vm: MoRef): Promise<MoRef> {
  const r = await s.call('ConsolidateVMDisks_Task', { _this: morOf(vm) });
  return moref(r.returnval)!;
}

export interface DiskChangeInfo { startOffset: number; length: number; changedArea: { start: number; length: number }[] }

export async function queryChangedDiskAreas(s: VimSession, vm: MoRef, snapshot: MoRef, deviceKey: number, startOffset: number, changeId: string): Promise<DiskChangeInfo> {
  const r = await s.call('QueryChangedDiskAreas', { _this: morOf(vm), snapshot: morOf(snapshot), deviceKey, startOffset, changeId });
  const rv = r.returnval ?? {};
  return {
    startOffset: num(rv.startOffset) ?? startOffset,
    length: num(rv.length) ?? 0,
    changedArea: arr(rv.changedArea).map((a: any) => ({ start: num(a.start)!, length: num(a.length)! })),
  };
}

export { bool, mor };
