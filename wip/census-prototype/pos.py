exec(open('groups.py').read().split("objs=collections.Counter()")[0])
def si_slots(si):
    slot=lambda i: q(si-1+8+8*i)
    flags=smi(slot(0)); locals_=smi(slot(2))
    i=3+2*locals_ if locals_<75 else 3+1+locals_
    if flags>>10&1: i+=1
    fnname=None
    if flags>>12&3: fnname=string(slot(i)); i+=2
    inferred=None
    if flags>>14&1: inferred=string(slot(i)); i+=1
    st=flags&15
    pos=None
    if st in (2,4,3,1,0): pos=(smi(slot(i)),smi(slot(i+1))); i+=2
    outer=slot(i) if flags>>22&1 else None
    return dict(flags=hex(flags),type=st,locals=locals_,fn=fnname,inf=inferred,pos=pos,outer=hex(outer) if outer else None)
done=set()
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
        if 0x812<=t<=0x821:
            sfi=struct.unpack_from('<Q',page,off+0x18)[0]
            ctx=struct.unpack_from('<Q',page,off+0x20)[0]
            n=sfiname(sfi)
            if n in ('onData','handleRequest','CachedResult','scopeinfo') and n not in done:
                done.add(n)
                fd=q(sfi-1+8); nsi=q(sfi-1+0x10); outer=q(sfi-1+0x18)
                print(n,'fd type',hex(itype(fd)), 'uncompiled start',struct.unpack('<ii',rd(fd-1+0x10,8)) if 0xdc<=itype(fd)<=0xdf else None)
                if itype(nsi)==0x105: print('  own si',si_slots(nsi))
                print('  outer',hex(itype(outer) or 0), si_slots(outer) if itype(outer)==0x105 else None)
                print('  ctx type',hex(itype(ctx)), 'ctx si', si_slots(q(ctx-1+16)) if itype(q(ctx-1+16))==0x105 else None)
        off+=size_of(page,off,mi[2],mi[1])
