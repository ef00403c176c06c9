import struct,sys,json,collections
pid=int(sys.argv[1])
sym=json.load(open('/tmp/census/syms.json'))
tname={v:k.split('__')[1] for k,v in sym.items() if k.startswith('type_')}
mem=open(f'/proc/{pid}/mem','rb',buffering=0)
def rd(a,n):
    mem.seek(a); return mem.read(n)
def u64(a): return struct.unpack('<Q',rd(a,8))[0]
pages=[]
for l in open(f'/proc/{pid}/maps'):
    p=l.split()
    if p[1]!='rw-p' or len(p)!=5: continue
    s,e=(int(x,16) for x in p[0].split('-'))
    a=(s+0x3ffff)&~0x3ffff
    while a+0x60<=e:
        h=struct.unpack('<12Q',rd(a,96))
        size,flags,heap,ast,aend=h[:5]
        if a<ast<aend<=a+size and size%4096==0:
            sid=rd(h[8]+0x10,1)[0]
            pages.append((a,sid,ast,aend))
        a+=0x40000
mapinfo={}
meta=None
def minfo(m):
    if m in mapinfo: return mapinfo[m]
    try: b=rd(m-1,0x30)
    except Exception: mapinfo[m]=None; return None
    mm=struct.unpack_from('<Q',b,0)[0]
    r=(mm,b[8],struct.unpack_from('<H',b,0xc)[0])
    mapinfo[m]=r; return r
def size_of(page,off,t,words):
    if words: return words*8
    rdq=lambda o: struct.unpack_from('<Q',page,off+o)[0]
    smi=lambda o: rdq(o)>>32
    if t<0x80:
        ln=struct.unpack_from('<I',page,off+0xc)[0]
        if t&7==0: return (16+ln*(1 if t&8 else 2)+7)&~7
        return None
    if 0xaf<=t<=0xbd or 0xcd<=t<=0xd6 or t in (0xc0,0xf0,0xf1,0xf7): return 16+8*smi(8)
    if t==0xbe: return (16+smi(8)+7)&~7
    if t==0xbf: return (0x36+smi(8)+7)&~7
    if t==0xfb: return smi(8)
    if t==0x112: return 24+8*smi(8)
    if t==0x103: return 16+8*(smi(8)&0x3ff)
    if t in (0xec,0xed): return 24+24*struct.unpack_from('<h',page,off+8)[0]
    return None
stats=collections.Counter(); bytes_=collections.Counter(); unk=collections.Counter(); resync=0;resbytes=0
for a,sid,ast,aend in pages:
    if sid not in (1,2,6): continue
    page=rd(a,aend-a)
    off=ast-a
    while off<aend-a:
        m=struct.unpack_from('<Q',page,off)[0]
        mi=minfo(m) if m&3==1 else None
        ok = mi is not None and minfo(mi[0]) is not None and minfo(mi[0])[0]==mi[0]
        if not ok:
            # resync
            start=off; off+=8
            while off<aend-a:
                m=struct.unpack_from('<Q',page,off)[0]
                if m&3==1:
                    mi=minfo(m)
                    if mi and minfo(mi[0]) and minfo(mi[0])[0]==mi[0]: break
                off+=8
            resync+=1; resbytes+=off-start; unk[('gap',sid)]+=1
            continue
        t=mi[2]
        sz=size_of(page,off,t,mi[1])
        if sz is None:
            unk[tname.get(t,hex(t))]+=1
            start=off; off+=8
            while off<aend-a:
                m=struct.unpack_from('<Q',page,off)[0]
                if m&3==1:
                    mi2=minfo(m)
                    if mi2 and minfo(mi2[0]) and minfo(mi2[0])[0]==mi2[0]: break
                off+=8
            sz=off-start; off=start
        stats[tname.get(t,hex(t))]+=1; bytes_[tname.get(t,hex(t))]+=sz
        off+=sz
print('pages',len(pages),'resync',resync,resbytes)
print('unknown-size',unk.most_common(40))
for k,v in stats.most_common(60): print(k,v,bytes_[k])
