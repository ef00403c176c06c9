import subprocess,struct,json,sys
node=sys.argv[1] if len(sys.argv)>1 else '/usr/bin/node'
secs=[]
for l in subprocess.run(['readelf','-SW',node],capture_output=True,text=True).stdout.splitlines():
    l=l.replace('[ ','[')
    p=l.split()
    if len(p)>6 and p[0].startswith('['):
        try: secs.append((p[1],int(p[3],16),int(p[4],16),int(p[5],16),p[2]))
        except: pass
data=open(node,'rb').read()
out={}
for l in subprocess.run(['nm','-S',node],capture_output=True,text=True).stdout.splitlines():
    p=l.split()
    if len(p)==4 and p[3].startswith('v8dbg_'):
        a=int(p[0],16)
        for n,sa,so,sz,t in secs:
            if sa<=a<sa+sz:
                if t=='NOBITS': v=0
                else: v=struct.unpack('<i',data[a-sa+so:a-sa+so+4])[0]
                out[p[3][6:]]=v
json.dump(out,open('syms.json','w'),indent=0)
print(len(out))
