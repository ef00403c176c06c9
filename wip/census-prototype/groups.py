exec(open('walk.py').read().split("stats=collections.Counter()")[0])
def q(a): return u64(a)
def itype(o):
    if o&3!=1: return None
    try: return minfo(q(o-1))[2]
    except Exception: return None
def string(o,depth=5):
    t=itype(o)
    if t is None or t>=0x80 or depth==0: return None
    ln=struct.unpack('<I',rd(o-1+0xc,4))[0]
    r=t&7
    if r==0: 
        if t&8: return rd(o-1+16,min(ln,200)).decode('latin1')
        return rd(o-1+16,2*min(ln,200)).decode('utf-16le')
    if r==1: return (string(q(o-1+16),depth-1) or '')+(string(q(o-1+24),depth-1) or '')
    if r==5: return string(q(o-1+16),depth-1)
    if r==2:
        d=q(o-1+0x18); return rd(d,min(ln,200)).decode('latin1') if t&8 else None
    return '?'
def smi(w): return w>>32 if w&0xffffffff==0 else None
def ctor(m):
    c=q(m-1+0x20)
    for _ in range(20):
        t=itype(c)
        if t==0xff: c=q(c-1+0x20); continue
        break
    t=itype(c)
    if t is not None and 0x812<=t<=0x821:
        sfi=q(c-1+0x18); return sfiname(sfi)
    return f'?{t}'
def sfiname(sfi):
    n=q(sfi-1+0x10)
    t=itype(n)
    if t is not None and t<0x80: return string(n)
    if t==0x105: return 'scopeinfo'
    return '(anon)'
def shape(m):
    bf3=struct.unpack('<I',rd(m-1+0x10,4))[0]
    if bf3>>21&1: return '(dictionary)'
    n=(bf3&1047552)>>10
    d=q(m-1+0x28)
    return [string(q(d-1+24+24*i)) for i in range(n)]
objs=collections.Counter()
for a,sid,ast,aend in pages:
    if sid not in (2,6): continue
    page=rd(a,aend-a); off=ast-a
    while off<aend-a:
        m=struct.unpack_from('<Q',page,off)[0]
        mi=minfo(m) if m&3==1 else None
        ok = mi is not None and minfo(mi[0]) is not None and minfo(mi[0])[0]==mi[0]
        if not ok or size_of(page,off,mi[2],mi[1]) is None:
            off+=8; continue
        t=mi[2]
        if t in (0x421,0x83c): objs[(t,ctor(m),str(shape(m)))]+=1
        if 0x812<=t<=0x821:
            sfi=struct.unpack_from('<Q',page,off+0x18)[0]
            objs[('fn',sfiname(sfi))]+=1
        off+=size_of(page,off,mi[2],mi[1])
for k,v in objs.most_common(25): print(v,k)
